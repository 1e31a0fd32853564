"""The review page: which images it picks, what it embeds, and a person's round trip through it in a real
Chromium (keys, mouse, reload, export) whose CSV then trains a model as an extra label file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import run_cli
from vehicle_ray.data import open_root
from vehicle_ray.errors import InputError
from vehicle_ray.report.review import (
    LOWEST,
    QC,
    UNCERTAIN,
    ReviewItem,
    common_root,
    review_run,
    select_for_review,
    write_page,
)

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "review-page.png"


def page_data(index_html: Path) -> dict:
    """The JSON the page embeds (what its script reads)."""
    text = index_html.read_text()
    match = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(match.group(1))


def test_selection_groups_are_disjoint_and_ordered():
    rng = np.random.default_rng(1)
    n = 200
    rows = pd.DataFrame(
        {
            "path": [f"/data/img/{i:04d}.jpg" for i in range(n)],
            "label": np.where(np.arange(n) % 3 == 0, "ambulance", "car"),
            "confidence": rng.uniform(0.5, 1.0, n),
            "decision": np.where(np.arange(n) % 10 == 0, "uncertain", "x"),
        }
    )
    rows["decision"] = np.where(rows["decision"] == "x", rows["label"], rows["decision"])
    chosen = select_for_review(rows, lowest=15, qc_per_class=5, max_uncertain=1000, seed=0)
    assert chosen["path"].is_unique
    uncertain = chosen[chosen["group"] == UNCERTAIN]
    assert len(uncertain) == 20 and (uncertain["decision"] == "uncertain").all()
    assert uncertain["confidence"].is_monotonic_increasing  # least confident first
    low = chosen[chosen["group"] == LOWEST]
    rest = rows[rows["decision"] != "uncertain"]
    assert sorted(low["path"]) == sorted(rest.nsmallest(15, "confidence")["path"])
    for label in ("ambulance", "car"):
        qc = chosen[chosen["group"] == f"{QC}: {label}"]
        assert len(qc) == 5 and (qc["label"] == label).all()
        assert qc["confidence"].min() >= low["confidence"].max()  # drawn from what is left
    again = select_for_review(rows, lowest=15, qc_per_class=5, max_uncertain=1000, seed=0)
    assert again["path"].tolist() == chosen["path"].tolist()  # seeded: the same page twice
    capped = select_for_review(rows, lowest=0, qc_per_class=0, max_uncertain=3, seed=0)
    assert len(capped) == 3 and set(capped["group"]) == {UNCERTAIN}


def test_common_root_of_paths_and_uris():
    assert common_root(["/d/img/a/1.jpg", "/d/img/b/2.jpg"]) == "/d/img"
    assert common_root(["/d/img/1.jpg"]) == "/d/img"
    assert common_root(["s3://bucket/night/a/1.jpg", "s3://bucket/night/b/2.jpg"]) == "s3://bucket/night"
    with pytest.raises(InputError, match="mix storage schemes"):
        common_root(["s3://bucket/1.jpg", "/d/2.jpg"])


def test_page_embeds_items_safely_and_leaves_off_unreadable_images(tmp_path):
    images = tmp_path / "secret-bucket-path"
    images.mkdir()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(images / "big.jpg")
    (images / "broken.jpg").write_bytes(b"not an image")
    items = [
        ReviewItem(name=n, group=UNCERTAIN, label="car", confidence=0.55, top=[("car", 0.55), ("bus", 0.45)])
        for n in ("big.jpg", "broken.jpg", "</script><b>x.jpg")
    ]
    page = write_page(tmp_path / "page", items, ["bus", "car"], "t", ("fn", "label"), open_root(images))
    assert page.items == 1 and page.skipped == 2
    html = (tmp_path / "page" / "index.html").read_text()
    assert "/*__REVIEW_DATA__*/" not in html and str(images) not in html  # no storage location in the page
    data = page_data(tmp_path / "page" / "index.html")
    assert [i["name"] for i in data["items"]] == ["big.jpg"] and data["classes"] == ["bus", "car"]
    with Image.open(tmp_path / "page" / data["items"][0]["thumb"]) as thumb:
        assert max(thumb.size) <= 192 and thumb.format == "JPEG"


def test_page_survives_a_name_that_closes_the_script(tmp_path):
    images = tmp_path / "img"
    (images / "</script>").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(images / "</script>" / "a.jpg")
    item = ReviewItem(name="</script>/a.jpg", group=LOWEST, label="car", confidence=0.6, top=[("car", 0.6)])
    write_page(tmp_path / "page", [item], ["bus", "car"], "t", ("fn", "label"), open_root(images))
    assert page_data(tmp_path / "page" / "index.html")["items"][0]["name"] == "</script>/a.jpg"


def test_review_needs_one_source_and_a_scoring_output(tmp_path):
    r = run_cli("review", str(tmp_path), "--training", "x.csv", "--out", str(tmp_path / "page"))
    assert (
        r.returncode == 2
        and r.stderr == "Error: review takes a scoring OUTPUT or --training CSV (with --images and --model), not both\n"
    ), r.stderr
    with pytest.raises(InputError, match="no scoring output at"):
        review_run(tmp_path / "nothing-here", tmp_path / "page")


def chrome(download_dir: Path):
    """Headless Debian chromium through its chromedriver, offline, with a fresh profile."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("the browser test needs /usr/bin/chromium and /usr/bin/chromedriver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="vehicle_ray_chrome_")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,860",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    return driver, profile


def wait_for_file(directory: Path, name: str, timeout: float = 20) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = directory / name
        if done.is_file() and not list(directory.glob("*.crdownload")):
            return done
        time.sleep(0.1)
    raise AssertionError(f"the page did not download {name} into {directory}: {list(directory.iterdir())}")


@pytest.mark.slow
def test_review_page_round_trip_in_chromium_then_training(trained_model, sample_dir, tmp_path, ray_local):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.score.driver import score
    from vehicle_ray.score.options import ScoreOptions
    from vehicle_ray.train.config import TrainOptions
    from vehicle_ray.train.driver import train

    scores = tmp_path / "scores"
    opts = ScoreOptions(uncertain_band=(0.2, 0.8))
    score(trained_model, sample_dir / "test.csv", scores, images=sample_dir / "images", opts=opts)
    r = run_cli("review", str(scores), "--out", str(tmp_path / "page"), "--lowest", "8", "--qc-per-class", "4")
    assert r.returncode == 0, r.stderr
    assert f"relative to {sample_dir / 'images'}" in r.stdout
    data = page_data(tmp_path / "page" / "index.html")
    names = [i["name"] for i in data["items"]]
    assert {i["group"] for i in data["items"]} >= {LOWEST, f"{QC}: 0", f"{QC}: 1"}
    assert all((sample_dir / "images" / n).is_file() for n in names)  # relative to the image root

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver, profile = chrome(downloads)
    try:
        driver.get((tmp_path / "page" / "index.html").as_uri())
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("1")  # card 0 -> class "1", the cursor moves on
        body.send_keys("0")  # card 1 -> class "0"
        body.send_keys("s")  # card 2 skipped
        body.send_keys(Keys.ARROW_RIGHT)  # card 3 left alone
        body.send_keys("1")  # card 4 -> "1"
        driver.find_element(By.CSS_SELECTOR, '#card-6 button[data-label="0"]').click()  # card 6 by mouse
        expected = {names[0]: "1", names[1]: "0", names[4]: "1", names[6]: "0"}
        assert "5 of" in driver.find_element(By.ID, "progress").text
        driver.refresh()  # state comes back from localStorage
        assert driver.find_element(By.ID, "progress").text.startswith(f"5 of {len(names)} reviewed (4 labelled")
        chosen = driver.find_elements(By.CSS_SELECTOR, ".choices button.chosen")
        assert len(chosen) == 5
        assert "current" in driver.find_element(By.ID, "card-7").get_attribute("class")
        if os.environ.get("VEHICLE_RAY_DOCS_SCREENSHOTS") == "1":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.execute_script("window.scrollTo(0, 0)")  # the group headings and the labelled cards
            driver.save_screenshot(str(SCREENSHOT))
        driver.find_element(By.ID, "export").click()
        exported = wait_for_file(downloads, "labels.csv")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    labels = pd.read_csv(exported, dtype=str)
    assert list(labels.columns) == ["fn", "label"]
    assert dict(zip(labels["fn"], labels["label"], strict=True)) == expected

    out = tmp_path / "model"
    train(
        TrainOptions(
            csv=sample_dir / "train.csv",
            more_csvs=(exported,),
            images=sample_dir / "images",
            out=out,
            storage_path=str(tmp_path / "runs"),
        ),
        load_recipe("tiny_cpu").with_overrides(epochs=1),
    )
    record = json.loads((out / "model.json").read_text())["data"]
    sha = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in (sample_dir / "train.csv", exported)]
    assert [c["sha256"] for c in record["csvs"]] == sha and record["csv_sha256"] == sha[0]
    assert record["images"] == 400 + 4  # the test images labelled on the page joined the training set
    assert record["train_images"] + record["valid_images"] == record["images"]


@pytest.mark.slow
def test_training_page_lists_flipped_labels_near_the_top(trained_model, sample_dir, tmp_path, ray_local):
    train_csv = pd.read_csv(sample_dir / "train.csv", dtype=str)
    flipped = train_csv.sample(8, random_state=3).index
    train_csv.loc[flipped, "emergency_or_not"] = train_csv.loc[flipped, "emergency_or_not"].map({"0": "1", "1": "0"})
    noisy = tmp_path / "noisy.csv"
    train_csv.to_csv(noisy, index=False)
    r = run_cli(
        "review",
        "--training",
        str(noisy),
        "--images",
        str(sample_dir / "images"),
        "--model",
        str(trained_model),
        "--top",
        "24",
        "--out",
        str(tmp_path / "page"),
    )
    assert r.returncode == 0, r.stderr
    data = page_data(tmp_path / "page" / "index.html")
    assert data["header"] == ["image_names", "emergency_or_not"]  # the export extends the same CSV
    listed = [i["name"] for i in data["items"]]
    assert len(listed) == 24
    losses = [i["loss"] for i in data["items"]]
    assert losses == sorted(losses, reverse=True)
    found = set(train_csv.loc[flipped, "image_names"]) & set(listed)
    assert len(found) >= 6, f"only {len(found)} of 8 flipped labels in the top 24"
    given = {i["name"]: i["given"] for i in data["items"]}
    assert all(given[n] == train_csv.set_index("image_names").loc[n, "emergency_or_not"] for n in found)
