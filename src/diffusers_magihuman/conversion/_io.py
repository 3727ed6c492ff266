# Copyright 2026 The diffusers-magihuman Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Safe folder writes and readable errors for the converters.

Every converter writes its output folder under a temporary name next to the destination and renames it into place
once complete, so an interrupted conversion leaves no half folder, and a folder that already holds files is only
replaced when the user asks (`overwrite=True` / `--overwrite`), and then only after the new folder is complete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator


class CorruptCheckpointError(ValueError):
    """A checkpoint file (shard, index, .ckpt) cannot be read: truncated, corrupt or not the expected format."""


def corrupt_file_error(path: str | os.PathLike, error: BaseException, what: str = "checkpoint file") -> CorruptCheckpointError:
    """A [`CorruptCheckpointError`] naming `path`, the reader's message, and what to do about it."""
    size = os.path.getsize(path) if os.path.exists(path) else 0
    return CorruptCheckpointError(
        f"Cannot read the {what} {os.fspath(path)!r} ({size:,} bytes): {type(error).__name__}: {error}. The file is "
        "truncated or corrupt (an interrupted download is the usual cause): download it again and compare its size "
        "and SHA-256 with the ones the Hub lists for it. Nothing was written."
    )


def read_json(path: str | os.PathLike, what: str) -> dict:
    """Reads a JSON object, with an error naming the file when it is missing, truncated or not an object."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The {what} {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt_file_error(path, e, what) from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"The {what} {path!r} is not a JSON object (got {type(data).__name__}).")
    return data


def folder_has_content(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    return os.path.isdir(path) and any(True for _ in os.scandir(path))


def check_output_folder(path: str | os.PathLike, overwrite: bool = False, what: str = "--output") -> str:
    """
    Checks that a converter may write the folder `path`, before anything is converted.

    Raises:
        ValueError: `path` is an existing file.
        FileNotFoundError: its parent folder does not exist.
        FileExistsError: `path` is a folder with files in it (it may hold a model) and `overwrite` is false.
    """
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what} is empty; give the folder to write.")
    if os.path.isfile(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise ValueError(f"{what} {path!r} is a file; give a folder path.")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{what} {path!r}: the folder {parent!r} does not exist; create it first.")
    if folder_has_content(path) and not overwrite:
        raise FileExistsError(
            f"{what} {path!r} already exists and is not empty (it may hold a model); nothing was written. Choose "
            "another folder, or pass --overwrite (API: overwrite=True) to replace it once the new one is complete."
        )
    return path


@contextlib.contextmanager
def atomic_output_folder(path: str | os.PathLike, overwrite: bool = False, what: str = "--output") -> Iterator[str]:
    """
    Context manager yielding a temporary folder next to `path`; on success it is renamed to `path`, on any error
    (or KeyboardInterrupt) it is deleted and `path` is left as it was.

    With `overwrite=True` an existing `path` is moved aside, the new folder renamed into place, and only then the old
    one deleted.
    """
    path = os.path.abspath(check_output_folder(path, overwrite, what))
    parent, name = os.path.split(path)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=parent)
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private (0700); give it a normal folder's mode
    try:
        yield staging
        check_output_folder(path, overwrite, what)  # something may have appeared meanwhile
        old = None
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(staging, path)
        if old is not None:
            if os.path.islink(old) or not os.path.isdir(old):
                os.unlink(old)
            else:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def positive_int(name: str):
    """An argparse `type=` that accepts integers >= 1 and names the flag otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 1, got {text!r}.") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1 (1 keeps the original width), got {value}.")
        return value

    return parse
