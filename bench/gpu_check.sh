#!/usr/bin/env bash
# GPU check: exercise every CUDA path of rbzoo once (≤ 10 min on one GPU) and print one summary table.
#
#   1. train_bench  one PGD-10 training step, masked cifar_resnet18 (keep 0.01) vs its dense twin,
#                   fp32 and bf16 autocast, contiguous and channels-last; plus CUDA top-k == CPU top-k
#   2. data         generated CIFAR-10-format data (tests/datagen.py, the real pickle layout)
#   3. train        `rbzoo train` 1 epoch on it with --device cuda --bf16 --channels-last
#   4. eval_aa      `rbzoo eval` with AutoAttack (standard) on a small subset, on the GPU
#   5. cross        the GPU result re-checked on CPU with the verification certificate
#                   (rbzoo.verdict: verify/fast(TF32)/bf16 profiles on the GPU vs verify on the CPU;
#                   each must be exact or within its near-tie tolerance), and eval_aa's labels vs CPU
#   6. torchrun     a 1-process `torchrun ... -m rbzoo train` (NCCL process group)
#   7. aa_bench     AutoAttack (APGD-CE + APGD-T) on a cifar_resnet18: plain pyautoattack (PyTorch's
#                   default numerics) vs `rbzoo eval`'s attack path (evidence kept) under --numerics
#                   verify and fast; wall time, interleaved (bench/bench_evidence.py's runners)
#
# Usage (from anywhere):   bench/gpu_check.sh [--dry-run] [WORKDIR]
#   --dry-run   run every step on the CPU with tiny sizes (gloo instead of NCCL): checks the
#               script's plumbing on a machine without a GPU. Without it, no CUDA = exit 2 at once.
# Logs: WORKDIR/<step>.log (default WORKDIR: a fresh temp folder). Exit status: number of failed steps.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
W="${1:-$(mktemp -d -t rbzoo-gpu-check.XXXXXX)}"
mkdir -p "$W" || exit 2
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's rbzoo, whatever is installed

if (( DRY )); then
    DEV=cpu; ARCH=(--arch tiny_resnet --keep 0.5); N_TRAIN=200; N_TEST=40; BATCH=32; BENCH=(tiny_resnet 2 1)
    SLOW=4  # CPU time limits: bf16 convolutions are slow on CPUs without bf16 units
    AA=(--n-examples 10 --version custom --attacks apgd-ce --n-iter 5); EVAL_N=10; AAB=(4 2 1)
else
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "gpu_check: CUDA is not available here ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1));" \
             "run it on a machine with an NVIDIA GPU, or pass --dry-run to check the script on CPU" >&2
        exit 2
    fi
    DEV=cuda; SLOW=1; ARCH=(); N_TRAIN=2000; N_TEST=500; BATCH=128; BENCH=(cifar_resnet18 128 10)
    AA=(--n-examples 100); EVAL_N=100; AAB=(500 50 3)
fi

SUMMARY="$W/summary.tsv"
: > "$SUMMARY"
FAILED=0

# step NAME SECONDS CMD...: run CMD with a time limit, log to $W/NAME.log; the step's one-line
# result is the last line of $W/NAME.result if the command wrote one, else the log's last line.
step() {
    local name=$1 limit=$(( $2 * SLOW )) rc status t0 t1 note
    shift 2
    echo "== $name ($*)" >&2
    t0=$(date +%s%N)
    timeout "$limit" "$@" > "$W/$name.log" 2>&1
    rc=$?
    t1=$(date +%s%N)
    case $rc in 0) status=ok ;; 124) status="TIMEOUT(${limit}s)" ;; *) status="FAIL(rc=$rc)" ;; esac
    (( rc == 0 )) || FAILED=$((FAILED + 1))
    if [[ -s "$W/$name.result" ]]; then note=$(tail -n 1 "$W/$name.result"); else note=$(tail -n 1 "$W/$name.log"); fi
    printf '%s\t%s\t%d\t%s\n' "$name" "$status" "$(( (t1 - t0) / 1000000000 ))" "${note:0:150}" >> "$SUMMARY"
}

cat > "$W/train_bench.py" <<'EOF'
"""Masked vs dense-twin PGD-10 training step: fp32/bf16 × contiguous/channels-last; CUDA top-k."""
import statistics, sys, time
from contextlib import nullcontext
import torch
sys.path.insert(0, "bench")
from _common import dense_twin
import rbzoo
from rbzoo.config import load_config
from rbzoo.layers import top_mask
from rbzoo.objectives import PGDTraining

arch, batch, reps, dev, result = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), torch.device(sys.argv[4]), sys.argv[5]
objective = PGDTraining(load_config("rn18-cifar10-pgd"))
g = torch.Generator().manual_seed(0)
x0, y = torch.rand(batch, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (batch,), generator=g).to(dev)
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
ratios = []
for prec in ("fp32", "bf16"):
    for cl in (False, True):
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = x0.contiguous(memory_format=fmt)
        cast = torch.autocast(dev.type, dtype=torch.bfloat16) if prec == "bf16" else nullcontext()
        runs = {}
        for kind in ("masked", "dense"):
            m = rbzoo.create_model(arch, keep=0.01, p=0.1, end_with_bn=True, seed=1234)
            m = (dense_twin(m) if kind == "dense" else m).to(dev).to(memory_format=fmt).train()
            runs[kind] = (m, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9))

        def step(kind):
            m, opt = runs[kind]
            sync(); t = time.perf_counter()
            with cast:
                loss, _ = objective(m, m, x, y, None)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            sync()
            assert torch.isfinite(loss), f"{kind} {prec}: loss {loss.item()}"
            return time.perf_counter() - t

        for kind in runs:  # warm-up: cuDNN/oneDNN plans, allocator
            for _ in range(2 if reps > 1 else 1):
                step(kind)
        times = {k: [] for k in runs}
        for r in range(reps):  # interleaved, order alternating
            for kind in (("masked", "dense") if r % 2 == 0 else ("dense", "masked")):
                times[kind].append(step(kind))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratios.append(f"{prec}{'/CL' if cl else ''} {med['masked'] / med['dense']:.2f}x")
        print(f"{prec:4s} channels_last={cl!s:5s} masked {med['masked'] * 1e3:8.1f} ms  dense {med['dense'] * 1e3:8.1f} ms"
              f"  ratio {med['masked'] / med['dense']:.3f}", flush=True)
# CUDA top-k against the exact CPU top-k (tie-free random scores: the same set is the only answer).
s = torch.randn(512 * 512 * 9, generator=torch.Generator().manual_seed(1))
kept = s.numel() // 100
same = torch.equal(top_mask(s.to(dev), kept).cpu(), top_mask(s, kept))
print(f"top-k on {dev.type} == CPU top-k: {same}")
open(result, "w").write(f"masked/dense step: {', '.join(ratios)}; top-k {dev.type}==cpu: {same}\n")
sys.exit(0 if same else 1)
EOF

cat > "$W/cross.py" <<'EOF'
"""The trained model re-evaluated on CPU (verify profile) as the reference certificate; the GPU's
verify, fast (TF32) and bf16 evaluations and the GPU AutoAttack run's labels checked against it."""
import json, sys
import numpy as np
import torch
import rbzoo
from rbzoo.data import get_dataset
from rbzoo.exact import numerics, ordered_batches
from rbzoo.verdict import certify, compare

ckpt, data_dir, dev, eval_json, result = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ds = get_dataset("cifar10", "test", data_dir)

@torch.no_grad()
def logits(model, device, profile):
    model = model.to(device).eval()
    with numerics(profile, device):
        return torch.cat([model(x.to(device)).float().cpu() for x, _ in ordered_batches(ds, None, 100)])

model = rbzoo.load(ckpt)
ref = certify(logits(model, "cpu", "verify"), profile="verify")
parts, ok = [], True
for profile in ("verify", "fast", "bf16"):
    cert = certify(logits(model, dev, profile), profile=profile)
    v = compare(ref, cert)  # near-ties of the GPU evaluation, τ the larger of the two profiles'
    ok &= v.ok
    parts.append(f"{profile}: {v.status}")
    print(f"{dev} {profile} vs cpu verify: {v.message()}")
r = json.load(open(eval_json))  # `rbzoo eval` on the GPU, first n test images, verify profile
n = r["n_examples"]
sub = certify(logits(model, "cpu", "verify")[:n], profile="verify")
same = r["predictions_sha256"] == sub.labels_sha256
print(f"eval_aa labels ({n}, {r['device']}) == CPU labels: {same}")
ok &= same
open(result, "w").write(f"{dev} vs cpu ({ref.n} images): {', '.join(parts)}; eval labels == cpu: {same}\n")
sys.exit(0 if ok else 1)
EOF

cat > "$W/aa_bench.py" <<'EOF'
"""AutoAttack time: plain pyautoattack vs rbzoo's attack path under the verify and fast profiles."""
import statistics, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, "bench")
from bench_evidence import cifar_model, run_plain, run_rbzoo
from rbzoo.robust import make_attack_spec

n, n_iter, reps, dev, result = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
model, ds, eps = cifar_model(n, dev)
idx = np.arange(n)
sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
tmp = Path(tempfile.mkdtemp())

def spec(profile):
    return make_attack_spec(eps=eps, version="custom", attacks=["apgd-ce", "apgd-t"], n_iter=n_iter, n_restarts=1,
                            chunk_size=n, numerics=profile)

runs = {"plain": lambda: run_plain(model, ds, idx, spec("verify"), dev)}
for profile in ("verify", "fast"):
    runs[profile] = lambda p=profile: run_rbzoo(model, ds, idx, spec(p), tmp / p, dev)
times = {k: [] for k in runs}
for k in runs:
    runs[k]()  # warm-up
for r in range(reps):
    for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
        sync(); t = time.perf_counter(); runs[k](); sync()
        times[k].append(time.perf_counter() - t)
med = {k: statistics.median(v) for k, v in times.items()}
for k, v in med.items():
    print(f"{k:6s} {v:8.2f} s  ({v / med['plain']:.2f}x plain)")
open(result, "w").write(f"AutoAttack {n} pts n_iter {n_iter}: plain {med['plain']:.1f} s; rbzoo verify "
                        f"{med['verify'] / med['plain']:.2f}x, fast {med['fast'] / med['plain']:.2f}x\n")
EOF

step train_bench 150 "$PY" "$W/train_bench.py" "${BENCH[@]}" "$DEV" "$W/train_bench.result"
step data 30 "$PY" -c 'import sys; sys.path.insert(0, "tests"); from datagen import write_cifar10
write_cifar10(sys.argv[1], n_train=int(sys.argv[2]), n_test=int(sys.argv[3])); print("cifar10-format", sys.argv[2], "train /", sys.argv[3], "test")' \
    "$W/data" "$N_TRAIN" "$N_TEST"
step train 120 "$PY" -m rbzoo train -c rn18-cifar10-pgd "${ARCH[@]}" -o "$W/run" --data-dir "$W/data" --device "$DEV" \
    --epochs 1 --batch-size "$BATCH" --bf16 --channels-last --test-subset "$N_TEST" --force
step eval_aa 150 "$PY" -m rbzoo eval "$W/run" --data-dir "$W/data" --device "$DEV" "${AA[@]}" --out "$W/eval_aa.json"
"$PY" - "$W/eval_aa.json" > "$W/eval_aa.result" 2>/dev/null <<'EOF' || rm -f "$W/eval_aa.result"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"clean {r['clean_correct']}/{r['n_examples']}, AutoAttack {r['attack']['version']} robust "
      f"{r['robust_correct']}/{r['n_examples']} ({r['wall_s']:.0f} s on {r['device']})")
EOF
step cross 90 "$PY" "$W/cross.py" "$W/run/best.safetensors" "$W/data" "$DEV" "$W/eval_aa.json" "$W/cross.result"
step torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m rbzoo train -c rn18-cifar10-pgd "${ARCH[@]}" \
    -o "$W/run_ddp" --data-dir "$W/data" --device "$DEV" --epochs 1 --batch-size "$BATCH" --test-subset "$N_TEST" --force
step aa_bench 150 "$PY" "$W/aa_bench.py" "${AAB[@]}" "$DEV" "$W/aa_bench.result"

echo
"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU", "| backend",
    "nccl" if torch.cuda.is_available() else "gloo")'
(( DRY )) && echo "DRY RUN on CPU: tiny sizes; no CUDA path was exercised"
printf '%-12s %-14s %6s  %s\n' step status "s" result
while IFS=$'\t' read -r name status secs note; do
    printf '%-12s %-14s %6s  %s\n' "$name" "$status" "$secs" "$note"
done < "$SUMMARY"
echo "logs in $W"
exit "$FAILED"
