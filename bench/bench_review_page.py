"""How the review page copes with a large run: N images (640x480 JPEGs) on one page, the time to make their
thumbnails, the page's load time in headless Chromium (Debian's, via Selenium), how many thumbnails it
loads up front (lazy loading), and 50 labels by key.

    .venv/bin/python bench/bench_review_page.py /tmp/review_bench [--images 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from vehicle_ray.data import open_root
from vehicle_ray.report.review import UNCERTAIN, ReviewItem, write_page


def make_images(directory: Path, n: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        if not (directory / name).exists():
            Image.new("RGB", (640, 480), (i % 255, 80, 160)).save(directory / name, quality=80)
    return names


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp()}")
    options.add_argument("--window-size=1280,860")
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    names = make_images(args.out / "images", args.images)
    items = [
        ReviewItem(name=n, group=UNCERTAIN, label="1", confidence=0.5, top=[("1", 0.5), ("0", 0.5)]) for n in names
    ]
    started = time.perf_counter()
    write_page(args.out / "page", items, ["0", "1"], "bench", ("fn", "label"), open_root(args.out / "images"))
    print(f"{len(names)} thumbnails and the page: {time.perf_counter() - started:.1f} s")

    from selenium.webdriver.common.by import By

    driver = browser()
    try:
        driver.get((args.out / "page" / "index.html").as_uri())
        loaded, done = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0]; "
            "return [n.domContentLoadedEventEnd, n.loadEventEnd]"
        )
        fetched = driver.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth).length")
        print(f"page: DOMContentLoaded {loaded / 1000:.2f} s, load {done / 1000:.2f} s; {fetched} thumbnails fetched")
        body = driver.find_element(By.TAG_NAME, "body")
        started = time.perf_counter()
        for _ in range(50):
            body.send_keys("1")
        print(f"50 labels by key (WebDriver round trips included): {time.perf_counter() - started:.2f} s")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
