"""Thin wrapper kept for `python conversion/convert_oobleck_to_diffusers.py ...`: the converter lives in
`diffusers_magihuman.conversion.convert_oobleck_to_diffusers` so that a pip install has it too."""

import sys

from diffusers_magihuman.conversion import convert_oobleck_to_diffusers as _impl


# Loaded as a file (e.g. `importlib.util.spec_from_file_location`), the module object is this one: give it the package
# module's names too, private helpers included.
globals().update({name: value for name, value in vars(_impl).items() if not name.startswith("__")})

if __name__ == "__main__":
    sys.exit(_impl.main())
else:
    # `import conversion.convert_oobleck_to_diffusers` gives the package module itself (private helpers included).
    sys.modules[__name__] = _impl
