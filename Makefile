# Entry points. `make tracks` and `make train` run on the built-in synthetic dataset when
# given no arguments; pass INPUT=, MODEL=, SHARDS=, CONFIG=, WEIGHTS= for real data.

CARGO    ?= cargo
PROFILE  ?= release
MOSIC    := target/$(PROFILE)/mosic
DATA     ?= data
SYNTH    := $(DATA)/synth
INPUT    ?= $(SYNTH)/JPEGImages
TRACKS   ?= $(DATA)/tracks
DEVICE   ?= cpu
MODEL    ?=

.PHONY: all build synth tracks test check-features clean-data

all: build

build:
	$(CARGO) build --profile $(PROFILE) -p mosic-cli

# The synthetic dataset: videos, masks and ground-truth tracks (seeded, deterministic).
synth: build
	$(MOSIC) synth --out $(SYNTH)

$(SYNTH)/synth.json:
	$(MAKE) synth

# The test suite; CI runs exactly this.
test:
	$(CARGO) nextest run --workspace --no-fail-fast

clean-data:
	rm -rf $(DATA)
