"""`lab2prod plots`: `dvc plots show` as an HTML page that renders with no internet.

DVC's own page (dvc-render's template) loads Vega, Vega-Lite and vega-embed from a CDN: offline it shows no
plot at all. Here `dvc plots show` fills a template of ours instead (`--html-template`), in which DVC's
`{scripts}` placeholder (the CDN <script> tags) is replaced by the three libraries themselves, inlined: the
JavaScript bundle of the `vl-convert-python` package (vega-embed, Vega-Lite and Vega, no node needed), which
defines the global `vegaEmbed` that each of DVC's plot <div>s calls. Image plots are files DVC copies beside
the page (`static/`). One self-contained page plus those files: open it from disk, or copy the folder.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from lab2prod.core.dvc import dvc_command, dvc_env
from lab2prod.core.errors import ConfigError, DataError

PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what dvc-render replaces in the whole template
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>lab2prod plots</title>
    <!-- vega-embed, Vega-Lite and Vega, bundled by vl-convert-python (vega-embed %(embed)s, Vega %(vega)s) -->
    <script>
%(bundle)s
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""
REMOTE_SCRIPT = re.compile(r"""<script[^>]*\ssrc\s*=\s*["']?(https?:)?//""", re.IGNORECASE)


def vega_bundle() -> tuple[str, dict[str, str]]:
    """The bundle as the body of a classic <script> (wrapped in a function, so that its top-level names do not
    clash with the `var spec` of DVC's plot scripts; it sets `window.vegaEmbed` itself), and its versions."""
    try:
        import vl_convert
    except ImportError:
        raise ConfigError(
            "lab2prod plots needs the vl-convert-python package (the training install has it: pip install "
            "'lab2prod[train]')"
        ) from None
    bundle = vl_convert.javascript_bundle()
    if "window.vegaEmbed" not in bundle:
        raise DataError("vl-convert-python's JavaScript bundle does not define window.vegaEmbed: update the package")
    clash = [p for p in PLACEHOLDERS if p in bundle]
    if clash:  # DVC would replace them inside the JavaScript
        raise DataError(f"vl-convert-python's JavaScript bundle contains {clash}: it cannot go through DVC's template")
    # "</script" inside the script would end it early; as "<\/script" it means the same in JavaScript strings
    body = "(function () {\n" + bundle.replace("</script", "<\\/script") + "\n})();"
    versions = {"vega": vl_convert.get_vega_version(), "embed": vl_convert.get_vega_embed_version()}
    return body, versions


def offline_template() -> str:
    body, versions = vega_bundle()
    return PAGE % {"bundle": body, **versions}


def show_offline(out: Path, targets: list[str] | None = None, project: Path | None = None) -> Path:
    """Run `dvc plots show` in `project` (default: here) with the offline template, writing `out/index.html`."""
    project = project or Path.cwd()
    if not (project / "dvc.yaml").exists():
        raise ConfigError(f"no dvc.yaml in {project}: run lab2prod plots in the project root")
    with tempfile.TemporaryDirectory(prefix="lab2prod-plots-") as scratch:
        template = Path(scratch) / "offline.html"
        template.write_text(offline_template(), encoding="utf8")
        cmd = dvc_command("plots", "show", "--html-template", str(template), "-o", str(out), *(targets or []))
        proc = subprocess.run(cmd, cwd=project, env=dvc_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"dvc plots show failed ({proc.returncode}):\n{proc.stderr.strip() or proc.stdout.strip()}")
    page = (out if out.is_absolute() else project / out) / "index.html"
    if not page.exists():
        raise DataError(f"dvc plots show wrote no {page}:\n{proc.stdout.strip()}")
    if REMOTE_SCRIPT.search(page.read_text(encoding="utf8")):
        raise DataError(f"{page} still loads a script from the network")
    return page
