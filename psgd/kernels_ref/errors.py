"""The error codes of every kernel's decoder: the one table, shared by C and Python.

A decoder (compiled or twin) returns ``(code, where)``; ``where`` says where the payload
went wrong (its meaning per code is below) and the compressor turns the pair into a
:class:`~psgd.errors.WireFormatError` message. ``setup.py`` writes this table into
``cython_ext/_errors.h`` (as ``PSGD_ERR_*``) before it compiles the kernels, so the C
kernels cannot drift from it; each compiled module exports the codes it returns, and the
tests check they equal these.

This file is read by ``setup.py`` without importing psgd: keep it plain assignments.
"""

ERR_OK = 0              # where = -1
ERR_SCALE = 1           # where = block index: scale is NaN, infinite or has its sign bit set
ERR_TRIT = 2            # where = index of a trit byte >= 243 (in the symbol stream)
ERR_LEVEL = 3           # where = coordinate whose level exceeds s
ERR_SIGN = 4            # where = coordinate with level 0 and sign bit 1
ERR_PADDING = 5         # where = index of the last symbol byte, whose padding is not zero
ERR_ZERO_BLOCK = 6      # where = coordinate with a nonzero trit in a block whose scale is 0
ERR_LENGTH = 7          # where = -1: the unary stream is too short or too long
ERR_VALUE = 10          # where = entry whose float32 value is NaN or Inf
ERR_VARINT = 11         # where = byte offset of a truncated / too long / too large varint
ERR_NONCANONICAL = 12   # where = byte offset of a varint with a redundant zero high byte
ERR_INDEX = 13          # where = entry number whose index is >= d
ERR_TRAILING = 14       # where = byte offset of the first byte after the last varint
ERR_WIDTH = 15          # where = block whose width byte is > 32 or not its codes' bit length
ERR_CODE = 16           # where = coordinate whose rounding code is 2^32 - 1
ERR_SIZE = 17           # where = the payload length the width bytes imply
ERR_STREAM = 18         # where = bit offset (in the stream after the scales) of a code cut short
ERR_RANGE = 19          # where = bit offset of a code whose value is out of range
