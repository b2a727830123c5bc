#!/usr/bin/env python3
"""Compose the README picture (JPEG) from `make demo`'s output folder.

    python scripts/readme_figure.py demo_output docs/demo.jpg

Top row: left image | disparity | depth (colourised); bottom row: correspondence.png (reference
pixels on one frame | their matches a second later). Scaled to 960 px wide.
"""
import sys

import cv2
import numpy as np


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__)
        return 2
    folder, out = argv
    def read(name):
        image = cv2.imread(f'{folder}/{name}', cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f'{folder}/{name} is missing: run make demo first')
        return image
    top = np.concatenate([read(n) for n in ('left.png', 'disparity_color.png', 'depth_color.png')], 1)
    bottom = read('correspondence.png')
    bottom = cv2.resize(bottom, (top.shape[1], round(bottom.shape[0] * top.shape[1] / bottom.shape[1])),
                        interpolation=cv2.INTER_AREA)
    figure = np.concatenate([top, bottom], 0)
    scale = 960 / figure.shape[1]
    figure = cv2.resize(figure, (960, round(figure.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    cv2.imwrite(out, figure, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f'wrote {out} ({figure.shape[1]}x{figure.shape[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
