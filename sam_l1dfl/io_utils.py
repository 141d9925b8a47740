"""Small I/O helpers shared by every stage: atomic writes, checksums, compact JSON, and the
checks every command runs on its output paths before any work.

Outputs are always written to a temporary name in the destination folder and renamed into
place, so a crash never leaves a half-written file (:func:`atomic_path`); an output folder is
written into a temporary sibling folder that is renamed into place (:func:`atomic_dir`).  Both
give what they write the permissions any file or folder the user creates gets
(:func:`output_mode`: 0666/0777 & ~umask), also when a library wrote it 0600.

Nothing the user gave us is modified: :func:`refuse_overwrite` refuses an output that is one of
the command's inputs, and :func:`check_output_path` an output that cannot be created (a parent
that is a file, a folder where a file goes); :func:`check_outputs` runs both, and the atomic
writers run the second again, so a library caller gets the same one-line
:class:`~sam_l1dfl.errors.InputError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from sam_l1dfl.errors import InputError


def sha256_file(path: "str | os.PathLike", chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike", suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` defaults to the full suffix of ``path`` (``.nii.gz`` stays ``.nii.gz``), so
    writers that pick a format from the file name still work.
    """
    path = check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix is None:
            suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + suffix, dir=path.parent)
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files, and some writers (safetensors.save_file) replace the file
        # with their own 0600 one: give the result the usual permissions (0666 & ~umask).
        os.chmod(tmp_path, output_mode())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def output_mode(folder: bool = False) -> int:
    """The permissions any file (``folder``: folder) the user creates gets: 0666 (0777) & ~umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def set_output_modes(folder: "str | os.PathLike") -> None:
    """Give ``folder`` and everything under it the usual permissions (files some library wrote
    with mkstemp's 0600, folders with mkdtemp's 0700)."""
    root = Path(folder)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, output_mode(folder=p.is_dir()))


@contextlib.contextmanager
def atomic_dir(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` to write a whole output folder into.

    If the block succeeds and ``path`` does not exist, the folder is renamed onto it, so a
    crash never leaves ``path`` half-written.  If ``path`` is an existing folder, each file is
    moved into it by its own rename (other files there are left alone).  On failure the
    temporary folder is removed.
    """
    path = check_output_path(path, folder=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise InputError(path, f"cannot be written ({exc.strerror or exc})") from None
    try:
        yield tmp
        set_output_modes(tmp)
        if path.is_dir():
            for f in sorted(tmp.rglob("*")):
                dest = path / f.relative_to(tmp)
                if f.is_dir():
                    dest.mkdir(exist_ok=True)
                else:
                    os.replace(f, dest)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: "str | os.PathLike", text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: "str | os.PathLike", obj: Any, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


_NUM_LIST = re.compile(r"\[\s+([-+0-9.eE,\s]+?)\s+\]")


def dumps_compact(doc: Any) -> str:
    """``json.dumps(indent=2)`` with short numeric arrays kept on one line (readable diffs)."""
    text = json.dumps(doc, indent=2)
    return _NUM_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def write_image_atomic(image, path: "str | os.PathLike", compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (format chosen from the final name's suffix)."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return Path(path)


# ---------------------------------------------------------------------- output preflight
def blocking_file(path: "str | os.PathLike") -> "Path | None":
    """The nearest existing ancestor of ``path`` when it is not a folder (``None`` otherwise)."""
    for anc in Path(path).absolute().parents:
        if anc.exists():
            return None if anc.is_dir() else anc
    return None


def check_output_path(path: "str | os.PathLike", folder: bool = False) -> Path:
    """Refuse an output that cannot be created, with one line naming it: a parent that is a
    file, an existing folder where a file goes (``folder=False``) or the reverse."""
    p = Path(path)
    anc = blocking_file(p)
    if anc is not None:
        raise InputError(p, f"cannot be created: {anc} is a file, not a folder")
    if folder and p.exists() and not p.is_dir():
        raise InputError(p, "exists and is not a folder")
    if not folder and p.is_dir():
        raise InputError(p, "is a folder; give a file name")
    return p


def _file_ids(paths: Iterable) -> dict:
    """(device, inode) -> path of every existing path (symbolic and hard links compare equal)."""
    out = {}
    for p in paths:
        if p is None:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(p)
            out.setdefault((st.st_dev, st.st_ino), Path(p))
    return out


def refuse_overwrite(outputs: Iterable, inputs: Iterable, *, within: Iterable = (),
                     hint: str = "choose another output", error: type = InputError) -> None:
    """Refuse, before any work, an output that is one of the ``inputs`` (same file, through any
    link), or an output folder in ``within`` whose contents are replaced and that holds an input.

    Raises ``error(output, "would overwrite the input [<input>]; <hint>")`` (the input is named
    when it is another path to the same file).
    """
    ins = _file_ids(inputs)
    if not ins:
        return
    for out_id, out in _file_ids(outputs).items():
        if out_id in ins:
            same = os.path.abspath(out) == os.path.abspath(ins[out_id])
            raise error(out, f"would overwrite the input{'' if same else ' ' + str(ins[out_id])}; {hint}")
    for folder in within:
        if folder is None or not Path(folder).is_dir():
            continue
        root = Path(folder).resolve()
        for p in ins.values():
            if root in Path(p).resolve().parents:
                raise error(folder, f"would overwrite the input {p}; {hint}")


def refuse_inside(out: "str | os.PathLike", folder: "str | os.PathLike | None", what: str,
                  hint: str = "choose another output") -> None:
    """Refuse an output folder that is ``folder`` (an input folder, e.g. the data) or inside it."""
    if folder is None or not Path(folder).is_dir():
        return
    f, o = Path(folder).resolve(), Path(out).resolve()
    if f == o or f in o.parents:
        raise InputError(out, f"would write into {what} {folder}; {hint}")


def check_outputs(files: Iterable = (), folders: Iterable = (), inputs: Iterable = (), *,
                  within: Iterable = (), hint: str = "choose another output") -> None:
    """The preflight every command runs before any work: :func:`check_output_path` on each output
    file and folder, then :func:`refuse_overwrite` against the inputs."""
    files, folders = [f for f in files if f is not None], [f for f in folders if f is not None]
    for f in files:
        check_output_path(f)
    for d in folders:
        check_output_path(d, folder=True)
    refuse_overwrite(files + folders, inputs, within=within, hint=hint)


def input_files(*paths) -> list[Path]:
    """The given paths that exist, with the files inside those that are folders (for
    :func:`refuse_overwrite`: a checkpoint or model directory, a prompt folder)."""
    out: list[Path] = []
    for p in paths:
        if p is None:
            continue
        p = Path(p)
        if p.is_dir():
            out.append(p)
            out += [f for f in p.rglob("*") if f.is_file()]
        elif p.exists():
            out.append(p)
    return out
