"""The image the container tests run: built by `make image` once per session."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.deploy.render import PARLEY_IMAGE, ROOT, containers, render

REPORT_DIR = ROOT / "var" / "deploy-test"


@pytest.fixture(scope="session")
def image() -> str:
    """The dev overlay's Parley image, built now by `make image` (its layers
    are cached, so an unchanged tree rebuilds in seconds): the test always
    runs the code of this checkout."""
    if shutil.which("docker") is None:
        raise AssertionError(
            "docker is not installed: this test runs the dev overlay's containers"
            " (apt-get install docker.io); it is never skipped"
        )
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, f"the Docker engine does not answer: {info.stderr.strip()}"
    images = {
        c["image"]
        for w in render("dev")
        if w["kind"] in ("Deployment", "StatefulSet")
        for c in containers(w)
        if c["image"].startswith(PARLEY_IMAGE + ":")
    }
    assert len(images) == 1, images
    (tag,) = images
    started = time.monotonic()
    build = subprocess.run(
        ["make", "image", f"IMAGE={tag}"], cwd=ROOT, capture_output=True, text=True, timeout=3600
    )
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "make-image.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, f"make image failed:\n{(build.stdout + build.stderr)[-4000:]}"
    print(
        f"make image: {time.monotonic() - started:.0f} s; {build.stdout.strip().splitlines()[-1]}"
    )
    return tag
