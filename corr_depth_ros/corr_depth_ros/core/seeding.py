"""Seeds of torch generators: 64-bit seeds without silent collisions.

torch's CPU generator is an mt19937 seeded from 32 bits: ``manual_seed`` keeps a seed's low 32
bits and drops the rest, so 5 and 2**60 + 5 give the same stream, as do a sample seed and the
same seed plus any multiple of 2**32 (the synthetic engine's validation and evaluation sample
seeds, base * 1,000,003 + index with bases of hundreds of millions, are far beyond 2**32).
"""
import numpy as np
import torch

SEED_LIMIT = 2 ** 64


def generator_seed(seed: int) -> int:
    """The 32-bit seed that ``seed`` (0 <= seed < 2**64) gives torch's generator.

    Seeds below 2**32 are used as they are (what they always gave, so data rendered from them
    stays the same); larger ones are mixed into 32 bits by numpy's SeedSequence, so two seeds
    share a stream only by chance (about 2**-32 a pair), never because they agree in their
    low bits.
    """
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f'seed must be in [0, 2**64), got {seed}')
    if seed < 2 ** 32:
        return seed
    return _mixed(seed)


def _mixed(*values: int) -> int:
    """32 bits from non-negative ints of any size, by numpy's SeedSequence."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint32)[0])


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`generator_seed` of ``seed``."""
    return torch.Generator().manual_seed(generator_seed(seed))


def mixed_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for stream ``stream`` (>= 0) of ``seed`` (any int, negative
    ones too, taken modulo 2**64): the pair is mixed whole into the generator's 32 bits."""
    return torch.Generator().manual_seed(_mixed(int(seed) % SEED_LIMIT, int(stream)))
