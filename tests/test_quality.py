"""Sample-quality measures (quality.py): the Fréchet distance against closed forms, precision and
recall on constructed point sets, and the sample-quality command on a tiny trained model."""

import json
import logging
import math
import re

import numpy as np
import pytest
import scipy.linalg
import torch

from torch_vae import TorchVaeError
from torch_vae.cli import main
from torch_vae.evaluation.sample_quality import (
    class_histogram,
    frechet_distance,
    kl_divergence,
    kth_neighbour_radii,
    precision_recall,
)
from torch_vae.io.files import file_sha256


def test_fd_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    want = ((m1 - m2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert math.isclose(frechet_distance(m1, np.diag(s1), m2, np.diag(s2)), want, rel_tol=1e-10)
    assert abs(frechet_distance(m1, np.diag(s1), m1, np.diag(s1))) < 1e-10


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_fd_of_full_covariances():
    """2x2: tr (S1^1/2 S2 S1^1/2)^1/2 = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))); 7x7: scipy's
    sqrtm of S1 S2."""
    rng = np.random.default_rng(1)
    s1, s2 = _random_cov(rng, 2), _random_cov(rng, 2)
    m1, m2 = rng.normal(size=2), rng.normal(size=2)
    p = s1 @ s2
    root_trace = math.sqrt(np.trace(p) + 2 * math.sqrt(np.linalg.det(p)))
    want = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root_trace
    assert math.isclose(frechet_distance(m1, s1, m2, s2), want, rel_tol=1e-9)
    s1, s2 = _random_cov(rng, 7), _random_cov(rng, 7)
    ref = np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert math.isclose(frechet_distance(np.zeros(7), s1, np.zeros(7), s2), ref, rel_tol=1e-8)


def test_precision_recall_of_constructed_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 5, generator=g)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 1000, k=3) == (0.0, 0.0)
    # half the samples are real points, half far away: precision 1/2; the samples' own balls
    # (their 3rd neighbour among themselves) cover the real points they copy
    fake = torch.cat([real[:100], real[:100] + 1000])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == 0.5 and recall >= 0.5


def test_kth_neighbour_radii_skip_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert kth_neighbour_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert kth_neighbour_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_class_histogram_and_kl():
    hist = class_histogram(torch.tensor([0, 0, 1, 3]), 4)
    assert hist.tolist() == [0.5, 0.25, 0.0, 0.25]
    assert kl_divergence(hist, hist) == 0.0
    assert math.isclose(kl_divergence([0.5, 0.5], [0.25, 0.75]),
                        0.5 * math.log(2) + 0.5 * math.log(2 / 3))  # fmt: skip
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_sample_quality_command_reports_every_field(train_tiny, labelled, tmp_path, capsys,
                                                    caplog):  # fmt: skip
    run = train_tiny(tmp_path / "run")
    common = ["--data_dir", str(labelled), "--quiet"]
    clf = tmp_path / "clf"
    assert main(["train-classifier", "--dataset", "mnist", "--out", str(clf), "--epochs", "1",
                 "--image_size", "32", "--batchsize", "8", *common]) == 0  # fmt: skip
    saved = json.loads((clf / "config.json").read_text())
    assert 0 <= saved["test_accuracy"] <= 1 and saved["options"]["epochs"] == 1
    again = ["train-classifier", "--dataset", "mnist", "--out", str(clf), "--epochs", "1",
             "--image_size", "32", "--batchsize", "8", "--seed", "1", *common]  # fmt: skip
    weights = (clf / "classifier.safetensors").read_bytes()
    assert main(again) == 1  # a classifier there already: kept
    assert "holds a classifier already; pass --overwrite" in capsys.readouterr().err
    assert (clf / "classifier.safetensors").read_bytes() == weights
    assert main([*again, "--overwrite"]) == 0
    assert (clf / "classifier.safetensors").read_bytes() != weights
    report = tmp_path / "q.json"
    args = ["sample-quality", "--model", str(run), "--nsamples", "16", "--report", str(report)]
    with caplog.at_level("INFO", logger="torch_vae"):
        assert main([*args, "--classifier", str(clf), *common]) == 0
    said = [r.getMessage() for r in caplog.records]  # each part of the work, before it
    for part in ("classifier features of the test split's images (the reference)",
                 "making the samples to measure",
                 "classifier features of as many training images (the floor)"):  # fmt: skip
        assert part in said, (part, said)
    r = json.loads(report.read_text())
    assert (r["sampler"], r["features"], r["feature_dims"], r["n_reference"]) == (
        "prior", "classifier", 128, 20
    )  # fmt: skip
    assert r["classifier"] == str(clf)  # which classifier's features
    for part in ("samples", "train_floor"):
        assert set(r[part]) == {"n_images", "fd", "kid", "kid_std", "precision", "recall",
                                "class_histogram", "class_kl"}  # fmt: skip
        assert r[part]["n_images"] == 16 and r[part]["fd"] >= 0
        assert 0 <= r[part]["precision"] <= 1 and 0 <= r[part]["recall"] <= 1
        assert math.isclose(sum(r[part]["class_histogram"]), 1, rel_tol=1e-4)
    assert len(r["reference_class_histogram"]) == 10 and r["class_names"][3] == "3"
    out = capsys.readouterr().out
    assert "Frechet distance" in out and "KID" in out and "classes (samples / test): 0 " in out
    assert (
        "the test split holds 20 images: distances measured against so few are rough" in caplog.text
    )
    assert (
        "measured on 16 samples: the FD and KID fall as the samples grow, and the recall "
        "rests on the k-NN balls of so few points; compare samplers and models only at the "
        "same --nsamples (1000 or more for more than a rough measure)"
    ) in caplog.text
    # the samples are seeded: a second run gives the same report (but its time)
    assert main([*args, "--classifier", str(clf), *common]) == 0
    again = json.loads(report.read_text())
    assert {**again, "seconds": 0} == {**r, "seconds": 0}
    # against the run's validation split, the class line names that split
    held = train_tiny(tmp_path / "held", "--val_images", "4")
    val = ["sample-quality", "--model", str(held), "--nsamples", "8", "--reference", "val"]
    capsys.readouterr()
    assert main([*val, "--no_floor", "--classifier", str(clf), *common]) == 0
    out = capsys.readouterr().out
    assert "classes (samples / val): 0 " in out
    assert "floor" not in out  # no floor measured: no empty column for it
    # the default report's name says what is off the defaults, so no report replaces another
    assert main([*val, "--seed", "2", "--no_floor", "--classifier", str(clf), *common]) == 0
    names = sorted(p.name for p in held.glob("sample-quality-*.json"))
    assert names == ["sample-quality-prior-clf-clf-val-n8-seed2.json",
                     "sample-quality-prior-clf-clf-val-n8.json"]  # fmt: skip
    # no classifier: the model's own encoder
    assert main([*args, "--features", "encoder", *common]) == 0
    r = json.loads(report.read_text())
    assert r["features"] == "encoder" and r["feature_dims"] == 3
    assert "class_kl" not in r["samples"]


def test_sample_quality_reports_on_another_dataset_keep_the_models_own(
    train_tiny, mnist_dir, tmp_path, caplog
):
    """A report against another --dataset was written under the name of the model's own and
    replaced it; its name now says the dataset. --nsamples with --reconstructions (which
    measure every reference image) named a report after a count it did not use: now a
    warning, and the name leaves it out."""
    from fakedata import write_folder

    run = train_tiny(tmp_path / "run")
    folder = write_folder(tmp_path / "mine", n=50, gray=True)
    args = ["sample-quality", "--model", str(run), "--nsamples", "8", "--features", "encoder",
            "--no_floor", "--data_dir", str(mnist_dir), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert main([*args, "--dataset", f"folder:{folder}"]) == 0
    names = sorted(p.name for p in run.glob("sample-quality-*.json"))
    assert len(names) == 2 and names[1] == "sample-quality-prior-encoder-n8.json", names
    assert names[0].startswith("sample-quality-prior-encoder-folder") and names[0].endswith(
        "_mine-n8.json")  # fmt: skip
    own = json.loads((run / "sample-quality-prior-encoder-n8.json").read_text())
    assert own["dataset"] == "mnist"
    assert own["model_sha256"] == file_sha256(run / "model.safetensors")  # the weights measured
    with caplog.at_level(logging.WARNING, logger="torch_vae"):
        assert main([*args, "--reconstructions"]) == 0
    assert "--reconstructions measures the reconstructions of every reference image" in (
        caplog.text)  # fmt: skip
    assert (run / "sample-quality-reconstructions-encoder.json").is_file()  # no -n8: not used


def test_a_classifier_measures_images_of_another_size_resized_as_the_data_pipeline_does(
    mnist_dir,
):
    """A 28x28 model's samples through a 32x32 classifier: the same features as the 32x32
    images the data pipeline makes of them (Pillow's bilinear)."""
    import torch

    from torch_vae.data import load_split
    from torch_vae.evaluation.classifier import Classifier, ClassifierConfig
    from torch_vae.evaluation.sample_quality import classifier_space

    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(dataset="mnist", image_size=32)).eval()
    space = classifier_space(clf)
    small = torch.from_numpy(load_split("mnist", "test", 28, mnist_dir, False))
    large = torch.from_numpy(load_split("mnist", "test", 32, mnist_dir, False))
    f_small, c_small = space.extract(small)
    f_large, c_large = space.extract(large)
    assert torch.equal(f_small, f_large) and torch.equal(c_small, c_large)


def test_a_classifier_whose_metadata_does_not_fit_its_weights_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    from torch_vae.evaluation.classifier import (
        Classifier,
        ClassifierConfig,
        load_classifier,
        save_classifier,
    )

    folder = save_classifier(Classifier(ClassifierConfig(dataset="mnist", image_size=16)),
                             tmp_path / "clf", {})  # fmt: skip
    weights = folder / "classifier.safetensors"
    state = load_file(weights)
    for config, message in (('{"num_classes": 12}', "weights do not fit its config"),
                            ('{"nonsense": 1}', "has a damaged config")):  # fmt: skip
        save_file(state, str(weights), metadata={"format": "torch-vae-classifier",
                                                 "config": config})  # fmt: skip
        with pytest.raises(TorchVaeError, match=message) as err:
            load_classifier(folder)
        assert "\n" not in str(err.value) and "train-classifier" in str(err.value)


def test_an_infinite_class_kl_is_inf_in_the_table_with_a_line_saying_why(capsys):
    from torch_vae.cli.sample_quality import print_quality

    scores = {"n_images": 10, "fd": 1.0, "kid": 0.1, "precision": 0.5, "recall": 0.5,
              "class_histogram": [0.5, 0.5], "class_kl": None}  # fmt: skip
    report = {"samples": scores, "dataset": "mnist", "reference": "test", "n_reference": 20,
              "measured_size": 28, "what": "samples", "sampler_description": "the prior",
              "features": "classifier", "feature_dims": 64, "k": 3, "class_names": ["a", "b"],
              "reference_class_histogram": [1.0, 0.0]}  # fmt: skip
    print_quality(report)
    out = capsys.readouterr().out
    assert re.search(r"class KL \(nats\) +inf", out)
    assert ("(class KL inf: some images are classified as a class that none of the test images "
            "is; null in the JSON report)") in out  # fmt: skip
    print_quality({**report, "samples": {**scores, "class_kl": 0.25}})
    out = capsys.readouterr().out
    assert "0.2500" in out and "class KL inf" not in out


def test_sample_quality_reference_val_without_a_validation_split_is_refused_as_evaluate_does(
    train_tiny, mnist_dir, tmp_path, capsys
):
    none = train_tiny(tmp_path / "none", "--val_images", "0")
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes((none / "model.safetensors").read_bytes())
    data = ["--data_dir", str(mnist_dir), "--quiet", "--features", "encoder"]
    said = {
        none: f"the run of {none} held out no validation images (--val_images 0, or too few "
        "images)",
        bare: f"{bare} has no config.json of its run beside it (which records the split)",
    }
    for model, why in said.items():
        capsys.readouterr()
        assert main(["sample-quality", "--model", str(model), "--reference", "val", *data]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"torch-vae: error: --reference val: {why}; use --reference test"]


def test_train_classifier_says_what_it_trains_and_shows_each_epoch_s_progress(
    labelled, tmp_path, capsys, caplog
):
    args = ["train-classifier", "--dataset", "mnist", "--out", str(tmp_path / "clf"),
            "--epochs", "1", "--image_size", "16", "--batchsize", "8", "--data_dir",
            str(labelled)]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="torch_vae"):
        assert main(args) == 0
    assert re.search(r"training a classifier of [\d,]+ parameters on 40 images of mnist at "
                     r"16x16: 5 steps per epoch, 1 epoch$", caplog.text, re.M)  # fmt: skip
    assert re.search(r"epoch 1/1: 100%.* 5/5", capsys.readouterr().err)


def test_sample_quality_reference_val_of_a_changed_folder_is_refused_before_any_network(
    tmp_path, capsys, monkeypatch
):
    from PIL import Image

    from fakedata import write_folder
    from torch_vae.cli import sample_quality

    folder = write_folder(tmp_path / "imgs", n=40, gray=True)
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{folder}", "--image_size", "16", "--depth", "2",
                 "--max_filters", "8", "--max_steps", "2", "--run_dir", str(run),
                 "--quiet"]) == 0  # fmt: skip
    Image.new("L", (20, 20), 3).save(folder / "added.png")  # one more training image
    monkeypatch.setattr(sample_quality, "pick_space", lambda *a: pytest.fail("network loaded"))
    capsys.readouterr()
    assert main(["sample-quality", "--model", str(run), "--reference", "val", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the dataset changed since it trained; use --reference test" in err[0]
