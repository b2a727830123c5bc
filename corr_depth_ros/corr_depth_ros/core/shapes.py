"""One shape-check helper, used at the top of public core functions.

A spec is a tuple of ints (exact size), None (any size) or str (a named size that must agree
across the arrays checked in one call), e.g. ``check_shape('disparity', d, ('H', 'W'), sizes)``.
"""
from typing import Dict, Optional, Sequence, Union

Dim = Union[int, str, None]


def check_shape(name: str, array, spec: Sequence[Dim],
                sizes: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """Raise ValueError unless ``array.shape`` matches ``spec``; return the named sizes.

    Works for numpy arrays and torch tensors. Pass the returned dict (or a shared one) to later
    calls so that named sizes such as 'H' and 'W' must agree between arrays.
    """
    sizes = {} if sizes is None else sizes
    shape = tuple(array.shape)
    if len(shape) != len(spec):
        raise ValueError(f'{name}: expected {len(spec)} dims {tuple(spec)}, got shape {shape}')
    for axis, (got, want) in enumerate(zip(shape, spec)):
        if want is None:
            continue
        if isinstance(want, str):
            if want in sizes and sizes[want] != got:
                raise ValueError(f'{name}: dim {axis} ({want}) is {got}, expected {sizes[want]} '
                                 f'to match the other inputs; shape {shape}')
            sizes[want] = got
        elif got != want:
            raise ValueError(f'{name}: dim {axis} is {got}, expected {want}; shape {shape}')
    return sizes
