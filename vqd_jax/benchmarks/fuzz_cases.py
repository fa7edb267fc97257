"""The case table of ``python -m vqd_jax.bench fuzz``: bad and odd inputs for every command line.

:func:`prepare` writes the inputs (tiny runs, an export, bad files); :func:`cases` lists
``fuzz.Case`` objects whose ``run`` calls a CLI's ``main(argv)``: ``vqd_jax.sample``,
``vqd_jax.encode``, ``vqd_jax.convert``, ``vqd_jax.train`` (its absl flags parsed as ``app.run``
would), or a captioned-folder data source (``fuzz_folders``).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil
import sys

from vqd_jax.benchmarks import fuzz_files as files
from vqd_jax.benchmarks import fuzz_folders as folders
from vqd_jax.benchmarks.fuzz import ERROR, OK, Case

PROMPT = "a red circle"
PHRASE = "red circle"


@dataclasses.dataclass
class Inputs:
  root: str
  run: str          # a diffusion run (configs/diffusion.py:tiny)
  vq: str           # its autoencoder run
  pretrained: str   # the run exported in the diffusers layout
  images: dict[str, str]
  prompt_files: dict[str, str]
  configs: dict[str, str]
  variants: dict[str, str]  # damaged copies of ``pretrained``
  not_runs: dict[str, str]  # folders and files that are not a run

  def out(self, name: str) -> str:
    return os.path.join(self.root, "out", name.replace("/", "_"))


def _compile_cache(root: str) -> None:
  """Identical sampling programs of successive cases hit JAX's persistent cache (unless one is
  configured already)."""
  import jax  # pylint: disable=import-outside-toplevel
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "compilation_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _tiny_runs(root: str, run_dir: str | None, vq_dir: str | None) -> tuple[str, str]:
  from vqd_jax import configs_io  # pylint: disable=import-outside-toplevel
  from vqd_jax.training import loop, vqvae_task  # pylint: disable=import-outside-toplevel
  if vq_dir is None:
    vq_dir = os.path.join(root, "vq")
    if not os.path.isdir(os.path.join(vq_dir, "checkpoints")):
      vqvae_task.save_untrained(vq_dir, configs_io.load_config("configs/vqvae.py:tiny"))
  if run_dir is None:
    run_dir = os.path.join(root, "run")
    config = configs_io.load_config("configs/diffusion.py:tiny",
                                    [f"vqvae_workdir={vq_dir}", "train.num_steps=1"])
    loop.train_and_evaluate(config, run_dir)  # resumes (at once) when already trained
  return run_dir, vq_dir


def _damaged_copy(run: str, root: str, name: str, paths: str) -> str:
  """A copy of ``run`` with every file matching ``paths`` (a glob under it) overwritten by zeros."""
  out = os.path.join(root, name)
  shutil.copytree(run, out)
  for path in glob.glob(os.path.join(out, paths)):
    with open(path, "r+b") as f:
      f.write(b"\0" * max(1, os.path.getsize(path)))
  return out


def _not_runs(root: str, run: str, vq: str) -> dict[str, str]:
  """Folders and a file given as ``--workdir`` that are not a usable diffusion run."""
  root = os.path.join(root, "not_runs")
  shutil.rmtree(root, ignore_errors=True)
  out = {name: os.path.join(root, name) for name in ("empty", "no_steps", "unfinished_step")}
  os.makedirs(out["empty"])
  os.makedirs(os.path.join(out["no_steps"], "checkpoints"))
  os.makedirs(os.path.join(out["unfinished_step"], "checkpoints", "3"))
  out["a_file"] = os.path.join(root, "a_file")
  with open(out["a_file"], "w", encoding="utf-8") as f:
    f.write("not a run\n")
  out["damaged_weights"] = _damaged_copy(run, root, "damaged_weights",
                                         "checkpoints/*/state/ocdbt.process_0/d/*")
  out["damaged_config"] = _damaged_copy(run, root, "damaged_config", "checkpoints/*/config/*")
  out["damaged_autoencoder"] = _damaged_copy(run, root, "damaged_autoencoder", "autoencoder/*")
  out["vqvae_run"] = vq
  return out


def prepare(root: str, *, run_dir: str | None = None, vq_dir: str | None = None) -> Inputs:
  """Writes every input into ``root`` (the tiny runs only when ``run_dir``/``vq_dir`` are None)."""
  from vqd_jax import convert  # pylint: disable=import-outside-toplevel
  _compile_cache(root)
  run, vq = _tiny_runs(root, run_dir, vq_dir)
  pretrained, variants_root = (os.path.join(root, name)
                                for name in ("pretrained", "pretrained_variants"))
  for folder in (pretrained, variants_root, os.path.join(root, "out")):
    shutil.rmtree(folder, ignore_errors=True)
  convert.export_run(run, pretrained)
  return Inputs(root=root, run=run, vq=vq, pretrained=pretrained,
                images=files.write_images(os.path.join(root, "images")),
                prompt_files=files.write_prompt_files(os.path.join(root, "prompts")),
                configs=files.write_configs(os.path.join(root, "configs")),
                variants=files.write_pretrained_variants(pretrained, variants_root),
                not_runs=_not_runs(root, run, vq))


# -- calling the command lines ---------------------------------------------------------------------


def _wrote(out: str, images: int, prompt: str | None = None, note: str | None = None):
  """A check: ``out`` holds ``images`` PNGs in samples.jsonl (the first with ``prompt``) and the
  output mentions ``note``."""
  def check(output: str) -> str | None:
    path = os.path.join(out, "samples.jsonl")
    if not os.path.isfile(path):
      return f"no {path}"
    with open(path, encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    if len(records) != images or not all(os.path.isfile(os.path.join(out, r["file"]))
                                         for r in records):
      return f"{len(records)} images recorded, {images} expected"
    if prompt is not None and records[0]["prompt"] != prompt:
      return f"prompt recorded as {records[0]['prompt']!r}, given {prompt!r}"
    if note is not None and note not in output:
      return f"the output does not mention {note!r}"
    return None
  return check


def sample_case(inputs: Inputs, name: str, *argv: str, expect: str = ERROR, model=None,
                prompt: str | None = None, note: str | None = None,
                add_prompt: bool = True) -> Case:
  """``python -m vqd_jax.sample`` on the tiny run (or ``model`` flags), one step, one image."""
  from vqd_jax import sample  # pylint: disable=import-outside-toplevel
  out = inputs.out(name)
  full = [*(model or ["--workdir", inputs.run]), "--out", out, "--steps", "1", "--num-samples",
          "1", *argv]
  if add_prompt and "--prompt" not in argv and "--prompts-file" not in argv:
    full += ["--prompt", PROMPT]
  check = _wrote(out, 1, prompt, note) if expect == OK else None
  return Case(name, lambda: sample.main(full), expect, check)


def convert_case(name: str, path: str, expect: str = ERROR) -> Case:
  """``python -m vqd_jax.convert check PATH``; an OK case must not import or run the classes
  that model_index.json names."""
  from vqd_jax import convert  # pylint: disable=import-outside-toplevel
  calls = []

  def run():
    system, os.system = os.system, lambda *a: calls.append(a) or 0
    try:
      return convert.main(["check", path])
    finally:
      os.system = system

  def check(output: str) -> str | None:
    if calls or "vqd_jax_fuzz_never_imported" in sys.modules:
      return "a class named in model_index.json was imported or called"
    return None if "transformer:" in output else "no component report printed"

  return Case(name, run, expect, check)


def train_cli(argv: list[str]):
  """``python -m vqd_jax.train ARGV`` in this process: flags parsed as ``app.run`` parses them
  (a bad flag prints the error and exits 1), then ``main``; ``app.UsageError`` exits 1 with its
  message, as ``app.run`` does. ``sys.argv`` is ARGV meanwhile (config_flags finds the
  ``--config.<field>`` overrides there); the absl flags are reset before and after, the override
  flags config_flags defined removed."""
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from vqd_jax import train  # pylint: disable=import-outside-toplevel
  saved_argv, sys.argv = sys.argv, ["vqd_jax.train", *argv]
  flags.FLAGS.unparse_flags()
  try:
    remaining = train.parse_flags(sys.argv)
    try:
      return train.main(remaining)
    except app.UsageError as e:
      raise SystemExit(f"FATAL Flags parsing error: {e}") from None
  finally:
    sys.argv = saved_argv
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    flags.FLAGS.mark_as_parsed()


def train_case(inputs: Inputs, name: str, *argv: str, config: str = "configs/diffusion.py:tiny"
               ) -> Case:
  workdir = inputs.out(name)
  # One training step at most, should a case not stop before training.
  full = ["--config", config, "--workdir", workdir, f"--config.vqvae_workdir={inputs.vq}",
          "--config.train.num_steps=1", *argv]
  return Case(name, lambda: train_cli(full))


def encode_case(inputs: Inputs, name: str, *argv: str, expect: str = ERROR,
                config: str = "configs/diffusion.py:tiny", encoded: str | None = None) -> Case:
  """``python -m vqd_jax.encode``; an OK case must print ``Encoded <encoded>...``."""
  from vqd_jax import encode  # pylint: disable=import-outside-toplevel
  full = ["--vqvae-workdir", inputs.vq, "--config", config, "--out", inputs.out(name), *argv]

  def check(output: str) -> str | None:
    return None if f"Encoded {encoded}" in output else f"expected 'Encoded {encoded}...'"

  return Case(name, lambda: encode.main(full), expect, check if encoded is not None else None)


# -- the table -------------------------------------------------------------------------------------


def prompt_cases(inputs: Inputs) -> list[Case]:
  s = functools.partial(sample_case, inputs)
  long_text = (PROMPT + " ") * 30
  huge = (PROMPT + " ") * 800
  pf = inputs.prompt_files
  return [
      s("prompt/empty", "--prompt", ""),
      s("prompt/whitespace_only", "--prompt", " \t\n "),
      s("prompt/one_of_two_empty", "--prompt", PROMPT, "--prompt", ""),
      s("prompt/none_given", add_prompt=False),
      s("prompt/and_prompts_file", "--prompt", PROMPT, "--prompts-file", pf["bom"]),
      s("prompt/10000_characters", "--prompt", huge[:10_000], expect=OK, note="truncated"),
      s("prompt/longer_than_context", "--prompt", long_text, expect=OK, note="truncated"),
      s("prompt/control_characters", "--prompt", "a red\x00 circle\x1b[31m\x07\u200b\r",
        expect=OK),
      s("prompt/emoji", "--prompt", "a red circle \U0001F534\U0001F642", expect=OK),
      s("prompt/emoji_only", "--prompt", "\U0001F534\U0001F642", expect=OK,
        note="no words"),
      s("prompt/unseen_words", "--prompt", "a zyzzyva quokka circle", expect=OK,
        note="zyzzyva"),
      s("prompts_file/blank_lines", "--prompts-file", pf["blank_lines"], expect=OK,
        prompt=PROMPT),
      s("prompts_file/byte_order_mark", "--prompts-file", pf["bom"], expect=OK, prompt=PROMPT),
      s("prompts_file/crlf", "--prompts-file", pf["crlf"], expect=OK, prompt=PROMPT),
      s("prompts_file/invalid_utf8", "--prompts-file", pf["invalid_utf8"]),
      s("prompts_file/latin1", "--prompts-file", pf["latin1"]),
      s("prompts_file/empty_file", "--prompts-file", pf["empty"]),
      s("prompts_file/only_blank_lines", "--prompts-file", pf["only_blank"]),
      s("prompts_file/missing", "--prompts-file", pf["missing"]),
      s("prompts_file/a_folder", "--prompts-file", inputs.root),
  ]


BAD_IMAGES = ("truncated", "bomb", "not_image", "empty_file", "missing", "folder")


def image_cases(inputs: Inputs) -> list[Case]:
  """--init-image, --mask and --paint with odd and broken image files."""
  img = inputs.images
  s = functools.partial(sample_case, inputs)

  def init(kind: str, **kwargs) -> Case:
    return s(f"init_image/{kind}", "--init-image", img[kind], "--mask", img["png"], **kwargs)

  def mask(kind: str, **kwargs) -> Case:
    return s(f"mask/{kind}", "--init-image", img["png"], "--mask", img[kind], **kwargs)

  def paint(kind: str, **kwargs) -> Case:
    return s(f"paint/{kind}", "--paint", f"{PHRASE}={img[kind]}", **kwargs)

  cases = [init(k, expect=OK) for k in ("wrong_size", "mode_p", "cmyk_jpeg", "rgba")]
  cases += [init(k) for k in BAD_IMAGES]
  cases += [mask(k, expect=OK) for k in ("wrong_size", "mode_1", "rgba")]
  cases += [mask(k) for k in BAD_IMAGES + ("black", "rgba_clear", "png16_dark")]
  cases += [s("mask/without_init_image", "--mask", img["png"]),
            s("init_image/without_mask_or_start_t", "--init-image", img["png"]),
            s("init_image/start_t_out_of_range", "--init-image", img["png"], "--start-t",
              "1000")]
  cases += [paint(k, expect=OK) for k in ("mode_l", "png16", "rgba")]
  cases += [paint(k) for k in BAD_IMAGES + ("black", "rgba_clear")]
  cases += [
      s("paint/no_equals_sign", "--paint", PHRASE),
      s("paint/empty_phrase", "--paint", f"={img['png']}"),
      s("paint/empty_path", "--paint", f"{PHRASE}="),
      s("paint/phrase_not_in_prompt", "--paint", f"blue square={img['png']}"),
      s("paint/unknown_word", "--paint", f"zyzzyva={img['png']}"),
      s("paint/weight_nan", "--paint", f"{PHRASE}={img['png']}", "--paint-weight", "nan"),
      s("paint/weight_negative", "--paint", f"{PHRASE}={img['png']}", "--paint-weight", "-1"),
      s("paint/unpainted_guidance_inf", "--paint", f"{PHRASE}={img['png']}",
        "--unpainted-guidance", "inf"),
      s("reference_image/model_without_clip_image", "--image", img["png"]),
      s("reference_image/image_only_without_image", "--image-only"),
  ]
  return cases


def numeric_cases(inputs: Inputs) -> list[Case]:
  s = functools.partial(sample_case, inputs)
  flags = [("num_samples_0", "--num-samples", "0"), ("num_samples_negative", "--num-samples", "-3"),
           ("num_samples_not_a_number", "--num-samples", "four"), ("steps_0", "--steps", "0"),
           ("steps_negative", "--steps", "-5"), ("steps_above_T", "--steps", "100000"),
           ("guidance_nan", "--guidance", "nan"), ("guidance_inf", "--guidance", "inf"),
           ("truncation_0", "--truncation", "0"), ("truncation_1.5", "--truncation", "1.5"),
           ("truncation_nan", "--truncation", "nan"), ("purity_nan", "--purity", "nan"),
           ("batch_size_0", "--batch-size", "0"), ("batch_size_negative", "--batch-size", "-1"),
           ("seed_negative", "--seed", "-1"), ("seed_above_32_bits", "--seed", str(2 ** 64)),
           ("checkpoint_step_missing", "--step", "999")]
  return [s(f"numeric/{name}", *argv) for name, *argv in flags]


def model_cases(inputs: Inputs) -> list[Case]:
  """--workdir that is not a run, damaged --pretrained folders, and ``convert check``."""
  s = functools.partial(sample_case, inputs)
  cases = [s(f"workdir/{kind}", model=["--workdir", path]) for kind, path in
           inputs.not_runs.items()]
  cases += [s("workdir/missing", model=["--workdir", os.path.join(inputs.root, "nope")]),
            s("workdir/and_pretrained", "--pretrained", inputs.pretrained)]
  v = inputs.variants
  cases += [s("pretrained/missing_folder", model=["--pretrained", inputs.root + "/nope"])]
  cases += [s(f"pretrained/{kind}", model=["--pretrained", path]) for kind, path in v.items()
            if kind not in ("extra_files", "arbitrary_classes")]
  cases += [convert_case("convert/missing_folder", inputs.root + "/nope"),
            convert_case("convert/extra_files", v["extra_files"], expect=OK),
            convert_case("convert/arbitrary_classes", v["arbitrary_classes"], expect=OK)]
  cases += [convert_case(f"convert/{kind}", v[kind]) for kind in
            ("malformed_index", "index_is_a_list", "missing_weights", "corrupt_weights")]
  return cases


def config_cases(inputs: Inputs) -> list[Case]:
  """Config files, presets, overrides and data folders of ``train`` and ``encode``."""
  c = inputs.configs
  folder = "--config.data.source=folder"
  bad = folders.all_bad_folder(inputs.root, inputs.images)
  mixed, usable = folders.mixed_folder(inputs.root, inputs.images)
  both = [  # (name, argv, config file or None: the tiny preset)
      ("override_wrong_type", ["--config.train.num_steps=abc"], None),
      ("override_unknown_field", ["--config.nonexistent=1"], None),
      ("missing_config_file", [], "configs/nope.py:tiny"),
      ("bad_preset", [], "configs/diffusion.py:nope"),
      ("config_syntax_error", [], c["syntax_error"]),
      ("config_without_get_config", [], c["no_get_config"]),
      ("preset_without_data", [], "configs/diffusion.py:S"),
      ("missing_data_folder", [folder, f"--config.data.path={inputs.root}/nope"], None),
      ("unusable_data_folder", [folder, f"--config.data.path={bad}"], None)]
  cases = []
  for cli, make in (("train", train_case), ("encode", encode_case)):
    cases += [make(inputs, f"{cli}/{name}", *argv, config=config or "configs/diffusion.py:tiny")
              for name, argv, config in both]
  e = functools.partial(encode_case, inputs)
  return cases + [
      train_case(inputs, "train/unexpected_argument", "extra"),
      train_case(inputs, "train/missing_autoencoder", f"--config.vqvae_workdir={inputs.root}/no"),
      # An MLP of 2**40 times the width: more device memory than any machine has.
      train_case(inputs, "train/out_of_device_memory", f"--config.model.mlp_ratio={2 ** 40}"),
      e("encode/num_examples_0", "--num-examples", "0"),
      e("encode/batch_size_0", "--batch-size", "0"),
      e("encode/missing_autoencoder", "--vqvae-workdir", f"{inputs.root}/nope"),
      e("encode/mixed_data_folder", folder, f"--config.data.path={mixed}", "--batch-size", "4",
        expect=OK, encoded=f"{usable} of "),
  ]


def cases(inputs: Inputs) -> list[Case]:
  """Every case, cheapest first."""
  return (config_cases(inputs) + folders.folder_cases(inputs.root, inputs.images)
          + prompt_cases(inputs) + numeric_cases(inputs) + image_cases(inputs)
          + model_cases(inputs))
