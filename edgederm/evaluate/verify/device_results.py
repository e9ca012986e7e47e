"""Device files (``edgederm-bench`` on a board, or the demo app's benchmark screen), merged into a verify report.

Both write ``edgederm.bench``'s document: ``{"device": {...}, "created": ..., "artifacts": [{"name",
"sha256", "format", "quant", "latency": [{"threads", "median_ms", "p90_ms", ...}]}]}`` with the
same latency fields as ``verify``; artifacts are matched by sha256, else by file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...core.errors import DataError

_FIX = "give a JSON file written by `edgederm-bench` or the demo app's benchmark screen (`python -m demo_app --benchmark-and-exit FILE`)"


def read_device_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read device results ({exc.strerror})", path=path, fix=_FIX) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"device results are not JSON ({exc})", path=path, fix=_FIX) from None
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise DataError("device results have no 'artifacts' list", path=path, fix=_FIX)
    for artifact in data["artifacts"]:
        latency = artifact.get("latency") if isinstance(artifact, dict) else None
        if not isinstance(latency, list) or not all(isinstance(t, dict) and {"threads", "median_ms"} <= t.keys() for t in latency):
            raise DataError("an artifact's 'latency' is not a list of {threads, median_ms, ...}", path=path, fix=_FIX)
    device = data.get("device") if isinstance(data.get("device"), dict) else {}
    data["device_label"] = device.get("name") or device.get("machine") or Path(path).stem
    data["file"] = str(path)
    return data
