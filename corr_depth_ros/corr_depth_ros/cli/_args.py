"""argparse types shared by the sub-commands: a bad value is refused while parsing, with the
option's name, instead of failing later with a traceback. No heavy imports here."""
import argparse
from typing import Tuple


def size_hw(text: str) -> Tuple[int, int]:
    """'WIDTHxHEIGHT' (e.g. 320x240) -> (height, width), each at least 2 px."""
    parts = str(text).lower().split('x')
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 2 for p in parts):
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT of at least 2x2 pixels, such as 320x240; got {text!r}')
    return int(parts[1]), int(parts[0])


def size_hw_multiple_of_32(text: str) -> Tuple[int, int]:
    """'WIDTHxHEIGHT' with both sides positive multiples of 32 (the mono net's input sizes)
    -> (height, width)."""
    height, width = size_hw(text)
    if height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f'both sides must be multiples of 32, such as 384x256; '
                                         f'got {text!r}')
    return height, width


def multiple_of_32(text: str) -> int:
    """A positive multiple of 32 (the mono net's input sizes), refused at parsing rather than at
    the first forward pass after minutes of rendering."""
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f'must be a multiple of 32, got {value}')
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {value}')
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float('inf'):
        raise argparse.ArgumentTypeError(f'must be a finite number > 0, got {text}')
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float('inf'):       # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f'must be a finite number >= 0, got {text}')
    return value


def in_range(kind, low, high):
    """argparse type: a ``kind`` (int or float) in [low, high]."""
    def parse(text: str):
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f'must be in [{low:g}, {high:g}], got {text}')
        return value
    parse.__name__ = kind.__name__      # argparse names it in "invalid int value: ..."
    return parse
