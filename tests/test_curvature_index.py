"""The curvature index: exact where the method is exact, its definition on a LoRA model, the
erase that starts from it, and its file's refusals."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import (
    QuadraticModel,
    delta_vector,
    regression_rows,
    ridge_solution,
    tiny_lora,
    word_rows,
)

from eraser_dist import api
from eraser_dist.arguments import EraseArguments, IndexArguments, LoraArguments, TrainArguments
from eraser_dist.cli import main
from eraser_dist.core.backend import InProcessBackend
from eraser_dist.core.influence import fisher_scaling, fit_curvature, newton_rhs, newton_step
from eraser_dist.core.reference import explicit_gauss_newton
from eraser_dist.core.requests import apply_request, parse_request
from eraser_dist.data import write_examples
from eraser_dist.errors import EraserError
from eraser_dist.llm.adapters import adapter_version
from eraser_dist.llm.curvature_index import (
    INDEX_META,
    INDEX_TENSORS,
    load_index,
    read_index_meta,
)

WEIGHT_DECAY = 0.05


def test_index_step_on_a_quadratic_loss_is_the_retrained_optimum():
    """Least squares: H is exact, and an index of as many pairs as weights inverts it, so
    the erase is its first step alone (no CG iteration) and lands on the ridge optimum of
    the edited data."""
    rows = regression_rows(30, 6)
    model = QuadraticModel(6)
    model.set_flat(ridge_solution(model, rows, WEIGHT_DECAY))
    args = EraseArguments(hvp="ggn", curvature="edited", tol=1e-6, max_iter=20)
    edited = apply_request(parse_request({"kind": "remove", "ids": ["q2", "q5", "q17"]}), rows)
    fitted = fit_curvature(model, edited.rows_after, WEIGHT_DECAY, args, rank=6,
                           progress=False)
    b = newton_rhs(model, edited, WEIGHT_DECAY, 8).sum(0)
    x, _ = model.collate(edited.rows_after)
    dense = x.T @ x / len(edited.rows_after) + WEIGHT_DECAY * torch.eye(6, dtype=torch.float64)
    direct = torch.linalg.solve(dense, b)
    assert float((fitted.curvature.inverse(b) - direct).norm() / direct.norm()) < 1e-6
    result = newton_step(model, edited, WEIGHT_DECAY, args, progress=False,
                         index=fitted.curvature)
    assert result.cg.iterations == 0 and result.first_products == 1
    retrained = ridge_solution(model, edited.rows_after, WEIGHT_DECAY)
    erased = model.get_flat() + result.delta
    assert float((erased - retrained).norm() / retrained.norm()) < 1e-6


def test_index_on_a_lora_model_matches_its_dense_definition():
    """tiny-llama with a rank-1 LoRA on q_proj (d = 128): the index's scaling is the
    empirical Fisher's diagonal + λ, its Ritz values are the eigenvalues of the scaled
    Gauss-Newton matrix D^-½ (G/W + λI) D^-½ formed densely (the logits' exact
    Jacobian), and its P⁻¹ is that matrix's inverse."""
    torch.manual_seed(3)
    model = tiny_lora(torch.float64, rank=1, targets=("q_proj",))
    with torch.no_grad():
        for p in model.params:
            p.normal_(0, 0.3)  # off B = 0, where half the curvature vanishes
    rows = word_rows(6)
    args = EraseArguments(hvp="ggn", batch_size=3)
    fitted = fit_curvature(model, rows, WEIGHT_DECAY, args, rank=model.dim, progress=False)
    weights = torch.ones(len(rows), dtype=torch.float64)
    backend = InProcessBackend(model)
    gradients = torch.stack([backend.gradient_sums([([row], torch.ones(1))], 1)[0]
                             for row in rows])
    diagonal = gradients.square().sum(0) / len(rows) + WEIGHT_DECAY
    assert torch.allclose(fitted.curvature.scaling, diagonal, rtol=1e-10)
    assert torch.allclose(fisher_scaling(lambda: gradients.square().sum(0), 1 / len(rows),
                                         WEIGHT_DECAY), diagonal)
    dense = explicit_gauss_newton(model, rows, weights) / len(rows)
    dense = (dense + dense.T) / 2 + WEIGHT_DECAY * torch.eye(model.dim, dtype=torch.float64)
    root = diagonal.rsqrt()
    scaled = root[:, None] * dense * root[None, :]
    assert torch.allclose(fitted.curvature.values, torch.linalg.eigvalsh(scaled).flip(0),
                          rtol=1e-5)
    b = torch.randn(model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    direct = torch.linalg.solve(dense, b)
    assert float((fitted.curvature.inverse(b) - direct).norm() / direct.norm()) < 1e-4


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """An adapter, its index, and two erases in a chain from it."""
    root = tmp_path_factory.mktemp("index")
    write_examples(root / "train.parquet", word_rows(16))
    api.train("tiny-llama", root / "train.parquet", root / "v0", LoraArguments(rank=2),
              TrainArguments(epochs=2, weight_decay=0.01), progress=False)
    args = EraseArguments(hvp="ggn", batch_size=8)
    meta = api.build_index("tiny-llama", root / "v0", root / "train.parquet", root / "index",
                           args, IndexArguments(rank=16), progress=False)
    for name, ids in (("first", ["r1", "r4"]), ("second", ["r7"])):
        (root / f"{name}.json").write_text(json.dumps({"kind": "remove", "ids": ids}))
    return root, meta


def test_an_erase_from_the_index_reaches_the_converged_step_in_few_products(chain):
    root, meta = chain
    assert meta.products == 16 and meta.hvp == "ggn"
    assert meta.rank == len(meta.ritz_values) and meta.ritz_values == sorted(
        meta.ritz_values, reverse=True) and min(meta.ritz_values) > 2 * meta.asymmetry
    assert meta.adapter_version == adapter_version(root / "v0")
    data, request = root / "train.parquet", root / "first.json"
    converged = api.erase("tiny-llama", root / "v0", data, request, root / "converged",
                          EraseArguments(hvp="ggn", tol=1e-6, max_iter=200), progress=False)
    fast = api.erase("tiny-llama", root / "v0", data, request, root / "v1",
                     EraseArguments(hvp="ggn", tol=1e-3, max_iter=300), progress=False,
                     index=root / "index")
    plain = api.erase("tiny-llama", root / "v0", data, request, root / "plain",
                      EraseArguments(hvp="ggn", tol=1e-3, max_iter=300), progress=False)
    assert converged.cg_converged and fast.cg_converged and plain.cg_converged
    # the index's products are paid once; each erase then needs fewer of its own
    assert fast.cg_iterations + fast.index.first_products < plain.cg_iterations
    assert fast.index.versions_behind == 0 and fast.index.drift == 0.0
    assert fast.index.rank == meta.rank and fast.index.first_residual < 1.0
    # the first erase on the index's own version records its residual as the fresh one
    assert fast.index.fresh_residual == fast.index.first_residual
    assert read_index_meta(root / "index").fresh_residual == fast.index.first_residual
    assert not fast.index.rebuild_advised
    delta = {name: delta_vector(root / name) for name in ("converged", "v1")}
    assert float((delta["v1"] - delta["converged"]).norm() / delta["converged"].norm()) < 5e-3
    # a later erase of the same version is judged against that record, not its own residual
    other = api.erase("tiny-llama", root / "v0", data, root / "second.json",
                      root / "other-v1", progress=False, index=root / "index")
    assert other.index.first_residual != fast.index.first_residual
    assert other.index.fresh_residual == fast.index.first_residual
    assert read_index_meta(root / "index").fresh_residual == fast.index.first_residual


@pytest.mark.parametrize("fresh, first, advised", [
    (None, 0.99, False), (None, 1.01, True),   # unrecorded: only a step worse than none
    (0.3, 0.59, False), (0.3, 0.61, True),     # twice the fresh residual
    (0.8, 0.99, False), (0.8, 1.01, True),     # twice 0.8 is above 1: 1 is the bar
])
def test_rebuild_is_advised_when_the_first_residual_has_grown(chain, fresh, first, advised):
    _, meta = chain
    judged = replace(meta, rebuild_growth=2.0, fresh_residual=fresh)
    assert judged.rebuild_advised(first) is advised


def test_a_later_version_of_the_chain_reuses_the_index_and_reports_its_age(chain):
    root, _ = chain
    if not (root / "v1").exists():
        pytest.skip("needs the erase of the test above")
    from eraser_dist.core.requests import apply_requests, load_request
    from eraser_dist.data import read_examples

    edited = apply_requests([load_request(root / "first.json")],
                            read_examples(root / "train.parquet"))
    write_examples(root / "train-v1.parquet", edited.rows_after)
    report = api.erase("tiny-llama", root / "v1", root / "train-v1.parquet",
                       root / "second.json", root / "v2", progress=False, index=root / "index")
    assert report.index.versions_behind == 1
    assert report.index.drift == pytest.approx(
        float(delta_vector(root / "v1").norm() / load_index(root / "index").theta.norm()),
        rel=1e-5)
    # the defaults from an index: its matrix and a short solve
    assert report.hvp == "ggn" and report.hessian_rows == 14
    lineage = json.loads((root / "v2" / "eraser_adapter.json").read_text())["lineage"]
    assert [link["adapter_version"] for link in lineage["chain"]] == [
        adapter_version(root / "v0"), adapter_version(root / "v1")]
    # an index of v1 does not fit v0, which is not erased from v1
    api.build_index("tiny-llama", root / "v1", root / "train-v1.parquet", root / "index-v1",
                    EraseArguments(hvp="ggn"), IndexArguments(rank=2), progress=False)
    with pytest.raises(EraserError, match="neither .* nor a version it was erased from"):
        api.erase("tiny-llama", root / "v0", root / "train.parquet", root / "first.json",
                  root / "never", progress=False, index=root / "index-v1")
    assert not (root / "never").exists()


def test_the_index_cache_reads_tensors_once_per_published_index(chain, tmp_path):
    """The warm engine's IndexCache: the same tensors while the index is the one read; a
    new meta file alone (the recorded fresh residual) is read without them; an index
    published again (a rename) is read afresh; an index unused for the idle time is
    forgotten."""
    import shutil

    from eraser_dist.files import atomic_write
    from eraser_dist.llm.curvature_index import IndexCache, record_fresh_residual

    root, _ = chain
    path = tmp_path / "index"
    shutil.copytree(root / "index", path)
    now = [0.0]
    cache = IndexCache(clock=lambda: now[0])
    first = cache.load(path)
    assert cache.load(path) is first and cache.tensor_reads == 1
    record_fresh_residual(path, read_index_meta(path), 0.25)
    renewed = cache.load(path)
    assert cache.tensor_reads == 1 and renewed.meta.fresh_residual == 0.25
    assert renewed.curvature is first.curvature
    atomic_write(path / INDEX_TENSORS, lambda tmp: shutil.copy(root / "index" / INDEX_TENSORS,
                                                               tmp))
    again = cache.load(path)
    assert cache.tensor_reads == 2 and again.curvature is not first.curvature
    assert torch.equal(again.curvature.vectors, first.curvature.vectors)
    now[0] += 10.0
    cache.release_idle(20.0)
    assert cache.load(path) is again and cache.tensor_reads == 2
    now[0] += 30.0
    cache.release_idle(20.0)
    cache.load(path)
    assert cache.tensor_reads == 3


def damage(root, name, edit) -> str:
    import shutil

    target = root / f"index-{name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root / "index", target)
    edit(target)
    return str(target)


def edit_meta(**changes):
    def edit(path):
        meta = json.loads((path / INDEX_META).read_text())
        meta.update(changes)
        (path / INDEX_META).write_text(json.dumps(meta))
    return edit


@pytest.mark.parametrize("name, edit, message", [
    ("missing-json", lambda p: (p / INDEX_META).unlink(), "not a curvature index: "
     "curvature_index.json is missing"),
    ("missing-tensors", lambda p: (p / INDEX_TENSORS).unlink(), "curvature_index.safetensors "
     "is missing"),
    ("bad-json", lambda p: (p / INDEX_META).write_text("{not json"), "is damaged"),
    ("truncated", lambda p: (p / INDEX_TENSORS).write_bytes(
        (p / INDEX_TENSORS).read_bytes()[:200]), "is damaged"),
    ("shape", edit_meta(rank=3), "'values' is of shape"),
    ("format", edit_meta(format=99), "index format 99"),
    ("base", edit_meta(base_fingerprint="0" * 64), "was built on base"),
    ("chain", edit_meta(adapter_version="feedfacefeedface"), "neither"),
    ("data", edit_meta(data_sha256="0" * 64), "built on other data"),
])
def test_a_foreign_or_damaged_index_is_refused_with_one_line(chain, capsys, name, edit,
                                                             message):
    root, _ = chain
    path = damage(root, name, edit)
    code = main(["erase", "--base", "tiny-llama", "--adapter", str(root / "v0"), "--data",
                 str(root / "train.parquet"), "--request", str(root / "first.json"), "--out",
                 str(root / f"out-{name}"), "--index", path, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (root / f"out-{name}").exists()


def test_index_command_refuses_bad_input_with_one_line(chain, capsys, tmp_path):
    root, _ = chain
    other = tmp_path / "other.parquet"
    write_examples(other, word_rows(16, prefix="s"))
    base = ["index", "--base", "tiny-llama", "--adapter", str(root / "v0"), "--quiet"]
    cases = [
        (["--data", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "i")],
         "does not exist"),
        (["--data", str(other), "--out", str(tmp_path / "i")],
         "is not the training set adapter"),
        (["--data", str(root / "train.parquet"), "--out", str(root / "index")],
         "already exists"),
        (["--data", str(root / "train.parquet"), "--out", str(tmp_path / "i"), "--rank", "0"],
         "--rank must be at least 1"),
        (["--data", str(root / "train.parquet"), "--out", str(tmp_path / "i"), "--workers",
          "2", "--hvp", "exact"], "--hvp exact needs double backward"),
    ]
    for argv, message in cases:
        code = main(base + argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, argv
    assert not (tmp_path / "i").exists()


def test_the_index_step_alone_costs_one_product(chain, capsys):
    """--max-iter 0 with an index: ΔΘ is the best multiple of the index's step, and its
    reported residual is its true one; without an index it is refused."""
    root, _ = chain
    report = api.erase("tiny-llama", root / "v0", root / "train.parquet", root / "first.json",
                       root / "step-only", EraseArguments(hvp="ggn", max_iter=0),
                       progress=False, index=root / "index")
    assert report.cg_iterations == 0 and report.index.first_products == 1
    assert report.relative_residual == report.index.first_residual < 1.0
    code = main(["erase", "--base", "tiny-llama", "--adapter", str(root / "v0"), "--data",
                 str(root / "train.parquet"), "--request", str(root / "first.json"), "--out",
                 str(root / "no-index"), "--max-iter", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-iter 0 takes a curvature index's step alone" in err


def test_index_command_builds_and_says_what_it_built(chain, capsys, tmp_path):
    root, _ = chain
    code = main(["index", "--base", "tiny-llama", "--adapter", str(root / "v0"), "--data",
                 str(root / "train.parquet"), "--out", str(tmp_path / "i"), "--rank", "3",
                 "--quiet"])
    out = capsys.readouterr().out
    meta = load_index(tmp_path / "i").meta
    # --hvp auto in one process: the exact Gauss-Newton product
    assert code == 0 and meta.products == 3 and meta.hvp == "ggn_exact"
    assert f"{meta.rank} Ritz pairs" in out and "3 HVPs" in out and str(tmp_path / "i") in out
