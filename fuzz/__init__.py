"""Coverage-guided fuzz targets (atheris for the host's parsers, libFuzzer for the guest agent in agent/).

`python -m fuzz.run TARGET [libFuzzer flags] [corpus dirs]` runs one target; `make fuzz` runs them all for
FUZZ_SECONDS each; tests/test_fuzz.py runs every target briefly with fixed seeds, replaying the seed corpus
(fuzz/corpus/TARGET) and the regression vectors (tests/vectors/fuzz/TARGET).
"""
