/* The decoders' error codes, written by setup.py from psgd/kernels_ref/errors.py
   (the one table: edit it there; tests check the committed copy is current). */
#ifndef PSGD_ERRORS_H
#define PSGD_ERRORS_H

enum {
    /* where = -1 */
    PSGD_ERR_OK = 0,
    /* where = block index: scale is NaN, infinite or has its sign bit set */
    PSGD_ERR_SCALE = 1,
    /* where = index of a trit byte >= 243 (in the symbol stream) */
    PSGD_ERR_TRIT = 2,
    /* where = coordinate whose level exceeds s */
    PSGD_ERR_LEVEL = 3,
    /* where = coordinate with level 0 and sign bit 1 */
    PSGD_ERR_SIGN = 4,
    /* where = index of the last symbol byte, whose padding is not zero */
    PSGD_ERR_PADDING = 5,
    /* where = coordinate with a nonzero trit in a block whose scale is 0 */
    PSGD_ERR_ZERO_BLOCK = 6,
    /* where = -1: the unary stream is too short or too long */
    PSGD_ERR_LENGTH = 7,
    /* where = entry whose float32 value is NaN or Inf */
    PSGD_ERR_VALUE = 10,
    /* where = byte offset of a truncated / too long / too large varint */
    PSGD_ERR_VARINT = 11,
    /* where = byte offset of a varint with a redundant zero high byte */
    PSGD_ERR_NONCANONICAL = 12,
    /* where = entry number whose index is >= d */
    PSGD_ERR_INDEX = 13,
    /* where = byte offset of the first byte after the last varint */
    PSGD_ERR_TRAILING = 14,
    /* where = block whose width byte is > 32 or not its codes' bit length */
    PSGD_ERR_WIDTH = 15,
    /* where = coordinate whose rounding code is 2^32 - 1 */
    PSGD_ERR_CODE = 16,
    /* where = the payload length the width bytes imply */
    PSGD_ERR_SIZE = 17,
    /* where = bit offset (in the stream after the scales) of a code cut short */
    PSGD_ERR_STREAM = 18,
    /* where = bit offset of a code whose value is out of range */
    PSGD_ERR_RANGE = 19,
};

#endif  /* PSGD_ERRORS_H */
