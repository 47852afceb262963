"""AI Toolkit's own per-clip video path, for `larder-bench video` to compare against.

For each clip, AI Toolkit's `load_and_process_video` (toolkit/dataloader_mixins.py, imported
from the checkout on PYTHONPATH) opens it with OpenCV, picks the frames, resizes and crops each
with PIL; the (F, 3, H, W) uint8 frames are saved as one safetensors file per clip, in a pool of
worker processes as a DataLoader with workers would.

Usage: aitk_video.py <clip-folder> <out-folder> <settings-json> <processes>
Prints one JSON object: {"clips", "frames", "seconds"}. Imports are not timed.
"""

import json
import os
import sys
import time
import types
from multiprocessing import Pool

import cv2
import numpy as np
from safetensors.numpy import save_file
from torchvision import transforms

from toolkit.dataloader_mixins import ImageProcessingDTOMixin

DEFAULTS = dict(num_frames=1, shrink_video_to_frames=True, fps=24, auto_frame_count=False,
                trim_auto_frame_count_tail=True, buckets=True, do_audio=False, debug=False)


def process(job):
    path, out, settings = job
    config = types.SimpleNamespace(**{**DEFAULTS, **settings})
    cap = cv2.VideoCapture(path)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    # The clips are made at the bucket's size: no resize, no crop (as in larder's run).
    item = types.SimpleNamespace(path=path, dataset_config=config, augments=None, has_augmentations=False,
                                 num_frames=config.num_frames, temporal_compression=8, frame_count_snapper=None,
                                 flip_x=False, flip_y=False, scale_to_width=w, scale_to_height=h,
                                 crop_x=0, crop_y=0, crop_width=w, crop_height=h)
    item.get_auto_frame_count = types.MethodType(ImageProcessingDTOMixin.get_auto_frame_count, item)
    ImageProcessingDTOMixin.load_and_process_video(item, transforms.PILToTensor())
    frames = item.tensor.numpy()
    stem = os.path.splitext(os.path.basename(path))[0]
    save_file({"pixels": np.ascontiguousarray(frames)}, os.path.join(out, stem + ".safetensors"))
    return frames.shape[0]


def main():
    folder, out, settings, processes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    os.makedirs(out, exist_ok=True)
    clips = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".mp4"))
    jobs = [(c, out, settings) for c in clips]
    start = time.perf_counter()
    with Pool(processes) as pool:
        frames = sum(pool.map(process, jobs, chunksize=1))
    seconds = time.perf_counter() - start
    print(json.dumps({"clips": len(clips), "frames": frames, "seconds": seconds}))


if __name__ == "__main__":
    main()
