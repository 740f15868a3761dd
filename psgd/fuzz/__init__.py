"""Fuzz the wire decoders (every compressor; powersgd's round messages; ``block_size: layer``
messages), the message envelope, the LIBSVM reader and the
config loader (:mod:`psgd.config_fuzz`'s YAML mutations).

``python -m psgd.fuzz [--target codecs|rounds|layered|wire|libsvm|config|all] [--cases N] [--compressors a,b]
[--seed S] [--timeout-per-case SECONDS] [--jobs J] [--json PATH]``

Every case is a deterministic function of ``(seed, target, name, case index)``: a valid input
(a compressor encoding of a random vector, an envelope, a few LIBSVM lines) is mutated
(truncations, appended and inserted bytes, bit flips, byte overwrites, header field rewrites,
payload length changes, "huge counts": runs of 0xFF, overlong varints, special float and
integer words, huge indices, NaN/Inf, binary noise, ...) and handed to the decoder. Outcomes:

* **rejected** with the project's error (:class:`~psgd.errors.WireFormatError`,
  :class:`~psgd.errors.DataFormatError`): good;
* **accepted**: allowed only when the header is intact. For a codec buffer that is the 8-byte
  codec header (magic, version, codec id, flags, d) of the valid encoding it came from, so a
  dense code may accept payload damage it cannot detect. Decoding *without* ``d=`` cannot
  verify a rewritten d field that the payload happens to be consistent with (the codec header
  has no checksum; every other field is checked): such cases are counted as ``d?`` and are not
  failures (the runtime always decodes with ``d=``). For the envelope, any change of the 32
  header bytes or of the length must be rejected (CRC-32). For LIBSVM, an accepted file must
  equal what a slow line-by-line reference of the documented grammar produces;
* **failure**: any other exception, a corrupted header that decodes, a result of the wrong
  shape or a non-finite one, decode and ``decode_add`` disagreeing, a LIBSVM result that
  differs from the reference, a **crash** (segfault, abort: the fuzz loop runs in child
  processes that publish the current case index in a shared file) or a **hang** (a watchdog
  kills a child that stays on one case longer than ``--timeout-per-case``).

Out-of-bounds reads are made loud: most codec buffers are placed so that they end at (or start
right after) a ``PROT_NONE`` guard page, so reading one byte past the end segfaults the child
instead of going unnoticed.

Layout: :mod:`~psgd.fuzz.mutations` (per-case randomness, valid inputs, special values,
guard-page placement), :mod:`~psgd.fuzz.targets` (codecs, envelope, LIBSVM: build, mutate,
judge one case), :mod:`~psgd.fuzz.harness` (child processes, watchdog, statistics, report,
replay) and :mod:`~psgd.fuzz.__main__` (the command line).

The exit status is 1 when any failure was found. Every failure is reported with its target,
compressor, parameters, seed, case index, the mutation and the reproducer bytes (hex);
``--replay TARGET:NAME:CASE`` re-runs one case in this process with a full traceback.
"""

from .harness import Report, Stats, replay, run_fuzz
from .mutations import FIXED_KEY
from .targets import (
    DIMS, OTHER_KEY, TARGETS, CodecTarget, LibsvmTarget, WireTarget, compressor_param_sets,
    find_data_dir, make_target, reference_libsvm)


def main(argv=None) -> int:
    """``python -m psgd.fuzz ...`` (see :mod:`psgd.fuzz.__main__`)."""
    from .__main__ import main as _main
    return _main(argv)


__all__ = ["DIMS", "FIXED_KEY", "OTHER_KEY", "TARGETS", "CodecTarget", "LibsvmTarget", "Report",
           "Stats", "WireTarget", "compressor_param_sets", "find_data_dir", "main", "make_target",
           "reference_libsvm", "replay", "run_fuzz"]
