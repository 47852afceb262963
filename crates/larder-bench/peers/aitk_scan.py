"""AI Toolkit's way of reading image sizes, for `larder bench-scan` to compare against.

The peer code paths (toolkit/data_loader.py, AiToolkitDataset.__init__ and FileItemDTO):
- list images with os.walk and a case-insensitive extension filter;
- cold: for each file, PIL.Image.open + ImageOps.exif_transpose, then .size (exif_transpose
  returns a copy, which decodes the whole image), and record it in the size cache;
- warm: load `.aitk_size.json`, and for each file compare the cached "size:mtime" signature
  from os.stat, taking the cached width and height when it matches.

Prints one JSON object: {"mode", "items", "seconds"}. The interpreter's start-up is not timed.
"""

import json
import os
import sys
import time

from PIL import Image, ImageOps

EXTS = (".jpg", ".jpeg", ".png", ".webp")
VERSION = "0.1.2"


def list_files(root):
    return [
        os.path.join(d, f)
        for d, _, files in os.walk(root)
        for f in files
        if f.lower().endswith(EXTS) and os.path.basename(d) != "_controls"
    ]


def signature(path):
    st = os.stat(path)
    return f"{st.st_size}:{int(st.st_mtime)}"


def cold(root, db_path):
    db = {"__version__": VERSION}
    n = 0
    for path in list_files(root):
        img = ImageOps.exif_transpose(Image.open(path))
        w, h = img.size
        db[path.replace(root, "")] = (w, h, signature(path))
        n += 1
    with open(db_path, "w") as f:
        json.dump(db, f)
    return n


def warm(root, db_path):
    with open(db_path) as f:
        db = json.load(f)
    n = 0
    for path in list_files(root):
        key = path.replace(root, "")
        entry = db.get(key)
        if entry is not None and len(entry) >= 3 and entry[2] == signature(path):
            w, h = entry[0], entry[1]
        else:
            w, h = ImageOps.exif_transpose(Image.open(path)).size
        n += 1 if w and h else 0
    return n


def main():
    mode, root, db_path = sys.argv[1], sys.argv[2], sys.argv[3]
    start = time.perf_counter()
    n = cold(root, db_path) if mode == "cold" else warm(root, db_path)
    print(json.dumps({"mode": mode, "items": n, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
