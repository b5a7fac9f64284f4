"""Where images come from: local paths, or any URI pyarrow's file systems read (file://, s3://, gs://, hdfs://).

`read_source_list` reads the `path` column of a CSV or Parquet file (`--manifest-in`); `load_source` decodes one
image from a path or URI with the same one-line errors as `clipseg.image.load_image`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..messages import first_line

if TYPE_CHECKING:
    from PIL import Image

PATH_COLUMN = "path"
# "s3://...", "file:///..." but not a Windows drive ("C:\\...") or a bare relative path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]*@")


def is_uri(text: str) -> bool:
    """True for "scheme://..." (a pyarrow file-system URI), False for plain local paths."""
    return bool(_URI.match(text))


def without_credentials(uri: str) -> str:
    """`uri` (or a message quoting URIs) without "user:secret@" credentials: what error messages show."""
    return _CREDENTIALS.sub(r"\1", uri)


def local_path(text: str) -> Path | None:
    """The local path a plain path or a file:// URI names; None for remote URIs (s3://, gs://, ...)."""
    if not is_uri(text):
        return Path(text)
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(text)
    except (ValueError, OSError) as error:
        raise ValueError(without_credentials(f"{text}: not a URI pyarrow can open ({first_line(error)})")) from None
    return Path(path) if isinstance(filesystem, fs.LocalFileSystem) else None


def read_source_list(manifest: str | Path) -> list[str]:
    """The image paths/URIs in the `path` column of a CSV or Parquet file (by suffix; `.csv.gz` and other
    compressed CSV work too), in file order, blanks dropped, duplicates kept once, each as written (relative local
    paths are relative to the working directory, as on the command line).

    Raises:
        ValueError: unreadable file, no `path` column, or no paths at all (one line naming the file).
        FileNotFoundError: the file does not exist.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    location = local_path(str(manifest))
    name = without_credentials(str(manifest))
    if location is not None and not location.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    try:
        if ".parquet" in Path(name).suffixes or name.endswith(".pq"):
            table = pq.read_table(str(location) if location is not None else str(manifest), columns=None)
        else:
            table = _read_csv(pa_csv, location, str(manifest))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        raise ValueError(without_credentials(f"{name}: cannot read it as CSV or Parquet ({first_line(error)})")) from None
    if PATH_COLUMN not in table.column_names:
        raise ValueError(
            f"{name}: no '{PATH_COLUMN}' column (found: {', '.join(table.column_names) or 'none'}); "
            f"the file must list one image path or URI per row under '{PATH_COLUMN}'"
        )
    values = table.column(PATH_COLUMN).cast(pa.string()).to_pylist()
    sources = dict.fromkeys(text for value in values if (text := (value or "").strip()))
    if not sources:
        raise ValueError(f"{name}: the '{PATH_COLUMN}' column lists no images")
    return list(sources)


def load_source(source: str) -> Image.Image:
    """Decode the image at a local path or URI: 8-bit RGB, EXIF orientation applied (`clipseg.image`)."""
    from ..image import decode_image_bytes, load_image

    location = local_path(source)
    if location is not None:
        return load_image(location)
    return load_image(decode_image_bytes(read_bytes(source), name=without_credentials(source)))


def read_bytes(uri: str) -> bytes:
    """The whole content of a file at a pyarrow file-system URI."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        if filesystem.get_file_info(path).type == fs.FileType.NotFound:
            raise FileNotFoundError(f"{without_credentials(uri)}: no such file")
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as error:
        raise OSError(without_credentials(f"{uri}: cannot read it ({first_line(error)})")) from None


def source_name(source: str) -> tuple[str, str]:
    """(stem, suffix) of the file a path or URI names, e.g. ("img", ".jpg") for s3://bucket/a/img.jpg?x=1."""
    tail = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] if is_uri(source) else Path(source).name
    path = Path(tail or "image")
    return path.stem, path.suffix


def _read_csv(pa_csv, location: Path | None, name: str):  # noqa: ANN001, ANN202 (pyarrow module, Table)
    # Every column as text: a numeric-looking path column must not become integers.
    options = pa_csv.ConvertOptions(column_types={PATH_COLUMN: "string"}, strings_can_be_null=False)
    if location is not None:
        return pa_csv.read_csv(location, convert_options=options)
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(name)
    with filesystem.open_input_stream(path) as stream:
        return pa_csv.read_csv(stream, convert_options=options)

