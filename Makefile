# Entry points. With no arguments everything runs on the built-in synthetic dataset with
# the native tracker and a tiny ViT on the CPU. Real use:
#   make tracks INPUT=/data/ytvos/train_all_frames MODEL=cotracker3.onnx DEVICE=cuda:0 BATCH=4 TRACKS=data/ytvos-tracks
#   make train CONFIG=configs/dinov2_s14_ytvos.toml WEIGHTS=dinov2_vits14.pth SHARDS=data/ytvos-tracks BACKEND=cuda DEVICE=cuda:0

CARGO    ?= cargo
PROFILE  ?= release
DATA     ?= data
SYNTH    := $(DATA)/synth
INPUT    ?= $(SYNTH)/JPEGImages
TRACKS   ?= $(DATA)/tracks
MODEL    ?=
# The device of both stages: cpu or cuda:N (ONNX Runtime's CUDA provider in stage 1; the cuda
# or tch backend in stage 2).
DEVICE   ?= cpu
BATCH    ?= 1
# More `mosic tracks` options, e.g. TRACKS_ARGS="--keep-going --grid 16".
TRACKS_ARGS ?=
CONFIG   ?= configs/tiny_synth.toml
SHARDS   ?= $(TRACKS)
WEIGHTS  ?=
BACKEND  ?= flex
# Training over several devices (one worker each, data.batch_size the global batch):
# DEVICES=cuda:0,cuda:1,... or a count of CPU workers.
DEVICES  ?=
RUN      ?=
RESUME   ?=
FEATURES := $(if $(filter cuda tch candle,$(BACKEND)),--features $(BACKEND),)
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

# Labelled synthetic videos outside the training range: validation during training, and the
# held-out test set of the demo report.
$(DATA)/synth-val/synth.json:
	$(MAKE) build
	$(MOSIC) synth --out $(DATA)/synth-val --first-video 1000 --videos 2 --no-mp4

$(DATA)/synth-test/synth.json:
	$(MAKE) build
	$(MOSIC) synth --out $(DATA)/synth-test --first-video 2000 --videos 4 --no-mp4

# Stage 1. Interrupted or failed runs resume: run it again with the same arguments.
ifeq ($(INPUT),$(SYNTH)/JPEGImages)
tracks: build $(SYNTH)/synth.json
else
tracks: build
endif
	$(MOSIC) tracks --input $(INPUT) --out $(TRACKS) --device $(DEVICE) $(if $(MODEL),--model $(MODEL) --batch $(BATCH)) $(TRACKS_ARGS)
	$(MOSIC) shards verify $(TRACKS)

# Stage 2. Each run gets a new directory, runs/<config name>/<date-time> (or RUN=dir);
# RESUME=1 continues the newest run of the config (or RUN) from its newest checkpoint.
ifeq ($(SHARDS),$(TRACKS))
train: build tracks $(DATA)/synth-val/synth.json
else
train: build
endif
	$(MOSIC) train --config $(CONFIG) --set data.shards=$(SHARDS) $(if $(WEIGHTS),--set model.weights=$(WEIGHTS)) \
		--backend $(BACKEND) $(if $(DEVICES),--devices $(DEVICES),--device $(DEVICE)) $(if $(RUN),--out $(RUN)) $(if $(RESUME),--resume)

# The whole chain on the synthetic set: tracks and their accuracy, then MoSiC and the no-motion
# ablation trained for 3 seeds, evaluated on held-out videos: runs/demo/report.md.
# Interrupted, it resumes: finished tracks and runs are kept.
demo: build $(SYNTH)/synth.json $(DATA)/synth-val/synth.json $(DATA)/synth-test/synth.json
	$(MOSIC) tracks --input $(SYNTH)/JPEGImages --out $(DATA)/demo-tracks
	$(MOSIC) shards stats $(DATA)/demo-tracks
	$(MOSIC) tracks eval --pred $(DATA)/demo-tracks --gt $(SYNTH)/gt
	$(MOSIC) demo --config configs/tiny_synth.toml --tracks $(DATA)/demo-tracks --val $(DATA)/synth-val \
		--test $(DATA)/synth-test --out runs/demo --seeds 3
	$(MOSIC) export --run runs/demo/mosic-seed0 --out runs/demo/backbone.safetensors

# The test suite; CI runs exactly this.
# MPI is built in for the tests: they start real processes under mpirun (tools/setup.sh
# installs OpenMPI).
test: setup
	$(CARGO) nextest run --workspace --no-fail-fast --features mosic-cli/mpi

clean-data:
	rm -rf $(DATA) runs
