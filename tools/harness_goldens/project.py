"""Where a project's cases and goldens live: its project file, `harness.toml`.

The project's root is the directory of the nearest `harness.toml`, looked for in the current
directory and then in each parent (as cargo finds Cargo.toml). Its `[paths]` table may move the
two directories, relative to the file (these are the defaults):

    [paths]
    cases = "cases"
    goldens = "goldens"

Other tables and keys (`[python]`, `[commands]`, read by the Rust side) are ignored here.
Without any harness.toml, the root is the nearest directory (the current one or a parent) that
has both cases/ and goldens/. `--root DIR` names the root instead: its harness.toml when it has
one, else the default paths.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

FILE = "harness.toml"
DEFAULT_PATHS = {"cases": "cases", "goldens": "goldens"}


class ProjectError(Exception):
    """No project found, or a harness.toml that cannot be read (the message names the file)."""


@dataclass(frozen=True)
class Project:
    root: Path
    cases: Path
    goldens: Path
    # The harness.toml the paths come from; None when there is none (default paths).
    file: Path | None = None

    @classmethod
    def at(cls, root: Path | str) -> Project:
        """The project rooted at `root` (`--root`): its harness.toml when it has one."""
        root = Path(root).resolve()
        f = root / FILE
        if f.is_file():
            return cls.load(f)
        return cls(root, root / DEFAULT_PATHS["cases"], root / DEFAULT_PATHS["goldens"])

    @classmethod
    def load(cls, file: Path) -> Project:
        """The project a harness.toml describes."""
        file = Path(file).resolve()
        try:
            doc = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as e:
            raise ProjectError(f"{file}: {(e.strerror or str(e)).lower()}") from None
        except UnicodeDecodeError:
            raise ProjectError(f"{file}: not UTF-8 text (hint: a TOML file is UTF-8)") from None
        except tomllib.TOMLDecodeError as e:
            raise ProjectError(f"{file}: invalid TOML: {e}") from None
        paths = doc.get("paths", {})
        if not isinstance(paths, dict):
            raise ProjectError(f"{file}: `paths` must be a table (hint: `[paths]` with `cases = \"cases\"`, `goldens = \"goldens\"`)")
        root = file.parent
        dirs = {}
        for key, default in DEFAULT_PATHS.items():
            v = paths.get(key, default)
            if not isinstance(v, str) or not v:
                raise ProjectError(f"{file}: `paths.{key}` must be a directory (a string, relative to {FILE}), not {v!r}")
            dirs[key] = Path(os.path.normpath(root / v))
        return cls(root, dirs["cases"], dirs["goldens"], file)

    def label(self, path: Path) -> str:
        """`path` as messages name it: relative to the root when inside it (`goldens/llama/mha`)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def find(start: Path | str | None = None) -> Project:
    """The project of `start` (default: the current directory): the nearest harness.toml in it
    or a parent, else the nearest of them with both cases/ and goldens/."""
    start = Path.cwd() if start is None else Path(start).resolve()
    dirs = [start, *start.parents]
    for d in dirs:
        if (d / FILE).is_file():
            return Project.load(d / FILE)
    for d in dirs:
        if (d / DEFAULT_PATHS["cases"]).is_dir() and (d / DEFAULT_PATHS["goldens"]).is_dir():
            return Project.at(d)
    raise ProjectError(
        f"no {FILE} in {start} or any parent directory, and none of them has both cases/ and goldens/ "
        f"(hint: create a project with `harness init`, or name its root with --root DIR)"
    )


def as_project(p: Project | Path | str) -> Project:
    """A Project as given, or the project rooted at a directory (as `--root` reads it)."""
    return p if isinstance(p, Project) else Project.at(p)
