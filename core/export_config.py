"""Config of the de-identified research export, ``pacsai export deid`` (issue 13, item 6).

Kept apart from ``core.config`` (which grew past a readable size); ``AppConfig.export`` uses
this model. The export key makes pseudonyms, the UID map and the date offsets: whoever holds
it can recompute them from original values, so it lives apart from the exports, and the demo
key is refused unless asked for (then the export warns loudly that it protects nothing).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ExportConfig"]

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportConfig(_Model):
    """Where the research export's key comes from and what it does with burned-in text."""

    key_file: str | None = Field(
        default=None,
        description="File holding the export key (at least 32 bytes, e.g. head -c 32 /dev/urandom "
        "| base64); pseudonyms, keyed UIDs and date offsets are HMACs under it. Keep it apart from "
        "the exports, readable by the exporting account only",
    )
    key_env: str | None = Field(
        default=None,
        pattern=_ENV_NAME,
        description="Environment variable holding the export key; used when key_file is unset",
    )
    demo_key: bool = Field(
        default=False,
        description="With neither key_file nor key_env: true uses a key generated under "
        "<var_dir>/export (logged as a loud warning: anyone who can read var/ can recompute the "
        "pseudonyms); false refuses to export",
    )
    project: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="Research project: pseudonyms, UIDs and date offsets are consistent within "
        "one project and unrelated between projects (--project overrides)",
    )
    max_date_shift_days: int = Field(
        default=365,
        ge=1,
        le=36500,
        description="Each patient's dates move back by a keyed 1 to this many days (plus a keyed "
        "time of day offset); intervals between a patient's dates are kept",
    )
    burned_in: Literal["exclude", "mask"] = Field(
        default="exclude",
        description="Images with burned-in annotation (Burned In Annotation YES, screen-capture "
        "classes, vendor screen saves): exclude them, or blank mask_regions (uncompressed "
        "pixels only; others stay excluded). Either way the manifest names them",
    )
    mask_regions: list[tuple[int, int, int, int]] = Field(
        default_factory=list,
        description="burned_in mask: rectangles [x0, y0, x1, y1] (columns, rows; end exclusive) blanked on every frame",
    )
