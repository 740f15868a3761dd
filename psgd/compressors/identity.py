"""``identity``: the uncompressed baseline, 32 or 64 bits per coordinate."""

import numpy as np

from ..validation import Choice
from .base import Compressor, all_finite, register_compressor, wire_error


@register_compressor
class Identity(Compressor):
    """Sends the raw little-endian floats. omega = 0 (exact up to the float32 cast)."""

    name = "identity"
    codec_id = 1
    unbiased = True
    examples = ({"dtype": "float32"}, {"dtype": "float64"})
    params = {"dtype": Choice("float32", "float64", default="float64")}

    def _itemsize(self):
        return 4 if self.dtype == "float32" else 8

    def _dtype(self):
        return "<f4" if self.dtype == "float32" else "<f8"

    def _encode(self, x, rng, key):
        return x.astype(self._dtype(), copy=False).tobytes()

    def _encode_into(self, x, rng, key, out):
        out.view(self._dtype())[:] = x

    def _decode_add(self, payload, d, out, weight, key):
        values = np.frombuffer(payload, dtype=self._dtype(), count=d)
        if not all_finite(values):
            raise wire_error(self.name, "payload holds NaN or Inf")
        if weight == 1.0:
            out += values
        else:
            out += weight * values

    def _decode_into(self, payload, d, out, key):
        values = np.frombuffer(payload, dtype=self._dtype(), count=d)
        np.copyto(out, values)
        if not all_finite(out):
            raise wire_error(self.name, "payload holds NaN or Inf")

    def _payload_nbytes(self, d):
        return d * self._itemsize()

    def _max_payload_nbytes(self, d):
        return d * self._itemsize()

    def omega(self, d):
        return 0.0
