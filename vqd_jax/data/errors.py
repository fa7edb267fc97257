"""The error of data that cannot be used at all (single bad records are skipped and counted)."""


class DataSourceError(ValueError):
  """A data source that cannot be opened or yields no usable example; the message says why."""
