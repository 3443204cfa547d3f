# Entry points. With no arguments everything runs on the built-in synthetic dataset with
# the native tracker and a tiny ViT on the CPU. Real use:
#   make tracks INPUT=/data/ytvos/train_all_frames MODEL=cotracker3.onnx DEVICE=cuda TRACKS=data/ytvos-tracks
#   make train CONFIG=configs/dinov2_s14_ytvos.toml WEIGHTS=dinov2_vits14.pth SHARDS=data/ytvos-tracks BACKEND=cuda

CARGO    ?= cargo
PROFILE  ?= release
DATA     ?= data
SYNTH    := $(DATA)/synth
INPUT    ?= $(SYNTH)/JPEGImages
TRACKS   ?= $(DATA)/tracks
MODEL    ?=
DEVICE   ?= cpu
CONFIG   ?= configs/tiny_synth.toml
SHARDS   ?= $(TRACKS)
WEIGHTS  ?=
BACKEND  ?= ndarray
RUN      ?= runs/$(notdir $(basename $(CONFIG)))
RESUME   ?=
FEATURES := $(if $(filter cuda tch flex candle,$(BACKEND)),--features $(BACKEND),)
MOSIC    := target/$(PROFILE)/mosic

.PHONY: all setup build synth tracks train demo test clean-data

all: build

setup:
	tools/setup.sh

build: setup
	$(CARGO) build --profile $(PROFILE) -p mosic-cli $(FEATURES)

# Seeded synthetic videos (frames, MP4s, masks) with ground-truth track shards.
$(SYNTH)/synth.json:
	$(MAKE) build
	$(MOSIC) synth --out $(SYNTH)

synth: $(SYNTH)/synth.json

# Stage 1. Interrupted runs resume: run it again with the same arguments.
ifeq ($(INPUT),$(SYNTH)/JPEGImages)
tracks: build $(SYNTH)/synth.json
else
tracks: build
endif
	$(MOSIC) tracks --input $(INPUT) --out $(TRACKS) --device $(DEVICE) $(if $(MODEL),--model $(MODEL))
	$(MOSIC) shards verify $(TRACKS)

# Stage 2. RESUME=1 continues the run in $(RUN) from its newest checkpoint.
ifeq ($(SHARDS),$(TRACKS))
train: build tracks
else
train: build
endif
	$(MOSIC) train --config $(CONFIG) --set data.shards=$(SHARDS) $(if $(WEIGHTS),--set model.weights=$(WEIGHTS)) \
		--backend $(BACKEND) --out $(RUN) $(if $(RESUME),--resume)

# The whole chain on the synthetic set: tracks, their accuracy, a rendered clip, training, export.
demo: build $(SYNTH)/synth.json
	$(MOSIC) tracks --input $(SYNTH)/JPEGImages --out $(DATA)/demo-tracks
	$(MOSIC) shards stats $(DATA)/demo-tracks
	$(MOSIC) tracks eval --pred $(DATA)/demo-tracks --gt $(SYNTH)/gt
	mkdir -p runs/demo
	$(MOSIC) shards render $(DATA)/demo-tracks --clip synth_0000#0 --out runs/demo/tracks.gif
	$(MOSIC) train --config configs/tiny_synth.toml --set data.shards=$(DATA)/demo-tracks --out runs/demo/train $(if $(wildcard runs/demo/train/checkpoints),--resume)
	$(MOSIC) export --run runs/demo/train --out runs/demo/backbone.safetensors
	@echo "demo: outputs in runs/demo (tracks.gif, train/loss.png, train/metrics.jsonl, backbone.safetensors)"

# The test suite; CI runs exactly this.
test: setup
	$(CARGO) nextest run --workspace --no-fail-fast

clean-data:
	rm -rf $(DATA) runs
