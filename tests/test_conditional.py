"""The commands on a class-conditional model: reconstruct, evaluate, fit-sampler,
sample-quality (per class, with the classifier's class accuracy), interpolate, traverse,
manifold and embed give each image its dataset label and decode as a class; bad classes are
one line. On the tiny labelled MNIST of conftest (image i of each split: class i % 10) with
untrained models, which still decode each class to its own images."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from torch_vae import VAE, ModelConfig, load_model
from torch_vae.analysis import latent
from torch_vae.analysis.pictures import enlarged, strip
from torch_vae.cli import main
from torch_vae.data import load_split
from torch_vae.errors import TorchVaeError
from torch_vae.evaluation.classifier import Classifier, ClassifierConfig, save_classifier
from torch_vae.evaluation.likelihood import calibrate_sigma, evaluate_model
from torch_vae.evaluation.sample_quality import class_accuracy
from torch_vae.explorer.state import load_explorer
from torch_vae.io.png import to_uint8
from torch_vae.priors import load_sampler, posterior_means
from torch_vae.runtime.device import to_float

DIGITS = tuple(str(i) for i in range(10))


def tiny_model(classes=DIGITS, latent_dims=3):
    """An untrained 16x16 model, class-conditional on ``classes``, with weights large enough
    that each class and code decodes to images of its own."""
    torch.manual_seed(0)
    config = ModelConfig(arch="dcgan", image_size=16, depth=2, max_filters=8,
                         latent_dims=latent_dims, classes=classes)  # fmt: skip
    model = VAE(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def tiny(folder, classes=DIGITS, latent_dims=3):
    """``tiny_model`` of MNIST, saved in ``folder``."""
    return tiny_model(classes, latent_dims).save_pretrained(folder, dataset="mnist")


def run(command, model, data_dir, *flags):
    return main([command, "--model", str(model), "--data_dir", str(data_dir), "--cpu",
                 "--quiet", *flags])  # fmt: skip


def split(data_dir, name="test"):
    return load_split("mnist", name, 16, data_dir, progress=False)


def labels_of(n):
    return torch.arange(n) % 10


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


def test_reconstruct_encodes_and_decodes_each_image_with_its_class(labelled, tmp_path):
    model_dir = tiny(tmp_path / "m")
    out = tmp_path / "rec"
    assert run("reconstruct", model_dir, labelled, "--rec_testdata", "--nimages", "12",
               "--outdir", str(out), "--precision", "fp32") == 0  # fmt: skip
    model, x = load_model(model_dir), to_float(torch.from_numpy(split(labelled)[:12]), "cpu")
    want = to_uint8(model.reconstruct(x, labels_of(12)))
    for i in (0, 7, 11):
        pair = np.asarray(Image.open(out / f"rec_{i:05d}.png"))
        assert np.array_equal(pair[:, 18:], want[i][..., 0])  # after the image and a gap
    other = to_uint8(model.reconstruct(x, (labels_of(12) + 1) % 10))
    assert not np.array_equal(want, other)  # the class reaches the picture


def test_evaluate_gives_each_image_its_class(labelled, tmp_path, capsys):
    model_dir = tiny(tmp_path / "m")
    report = tmp_path / "eval.json"
    assert run("evaluate", model_dir, labelled, "--nimages", "8", "--iw_samples", "2",
               "--report", str(report)) == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert r["conditional"] is True and r["n_images"] == 8
    assert "-log p(x | class)" in capsys.readouterr().out
    model = load_model(model_dir)
    train = torch.from_numpy(split(labelled, "train"))
    sigma = calibrate_sigma(model, train, "cpu", labels=labels_of(len(train)))
    want = evaluate_model(model, torch.from_numpy(split(labelled)[:8]), "cpu", sigma, 2,
                          progress=False, labels=labels_of(8))  # fmt: skip
    assert r["decoder_sigma"] == sigma
    assert math.isclose(r["objective"], want["objective"]) and math.isclose(r["nll"], want["nll"])


def test_a_dataset_whose_classes_the_model_lacks_is_one_line(labelled, tmp_path, capsys):
    model_dir = tiny(tmp_path / "m", classes=("0", "1", "2"))
    assert run("reconstruct", model_dir, labelled, "--outdir", str(tmp_path / "r")) == 1
    one_line_error(capsys, "mnist has the class '3', which the model does not know")
    assert run("evaluate", model_dir, labelled, "--report", str(tmp_path / "e.json")) == 1
    one_line_error(capsys, "which the model does not know")


def test_fit_sampler_fits_the_latents_given_each_class_and_generate_uses_it(labelled, tmp_path):
    model_dir = tiny(tmp_path / "m")
    assert run("fit-sampler", model_dir, labelled, "--sampler", "gaussian", "--nscore", "8") == 0
    prior = load_sampler(model_dir, "gaussian")
    model, train = load_model(model_dir), split(labelled, "train")
    z = posterior_means(model, train, labels=labels_of(len(train)))
    assert torch.allclose(prior.tensors()["means"][0].float(), z.mean(0), atol=1e-4)
    assert prior.info["validation"]["n_images"] == 8
    gen = tmp_path / "gen"
    assert main(["generate", "--model", str(model_dir), "--sampler", "gaussian", "--class", "3",
                 "--nsamples", "4", "--outdir", str(gen), "--quiet"]) == 0  # fmt: skip
    assert len(list(gen.glob("sample_*.png"))) == 4


def test_class_all_with_too_few_samples_for_a_row_per_class_says_so(tmp_path, caplog):
    model_dir = tiny(tmp_path / "m", classes=("a", "b", "c"))
    args = ["generate", "--model", str(model_dir), "--class", "all", "--outdir"]
    with caplog.at_level("WARNING", logger="torch_vae"):
        assert main([*args, str(tmp_path / "few"), "--nsamples", "8", "--sampler", "prior"]) == 0
        assert "--nsamples 8 shows 1 of the 3 classes (--nsamples 24 for all)" in caplog.text
        caplog.clear()
        assert main([*args, str(tmp_path / "all"), "--nsamples", "17", "--sampler", "prior"]) == 0
        assert "classes" not in caplog.text


def test_class_all_s_overview_names_each_row_s_class(tmp_path):
    from PIL import Image

    from torch_vae.io.png import grid

    model_dir = tiny(tmp_path / "m", classes=("a", "b", "c"))
    out = tmp_path / "all"
    assert main(["generate", "--model", str(model_dir), "--class", "all", "--outdir", str(out),
                 "--nsamples", "24", "--sampler", "prior", "--quiet"]) == 0  # fmt: skip
    samples = np.stack([np.asarray(Image.open(out / f"sample_{i:05d}.png")) for i in range(24)])
    plain = grid(samples[..., None] if samples.ndim == 3 else samples, nrow=8)
    overview = np.asarray(Image.open(out / "all.png"))
    overview = overview[..., None] if overview.ndim == 2 else overview
    margin = overview.shape[1] - plain.shape[1]
    assert margin > 0 and np.array_equal(overview[:, margin:], plain)  # the samples as they were
    h = samples.shape[1]
    for r in range(3):  # each row's name is written in the margin at its left
        band = overview[2 + r * (h + 2) : 2 + r * (h + 2) + h, :margin]
        assert (band < 128).any(), r


@pytest.fixture
def classifier(tmp_path):
    """An untrained classifier of 16x16 MNIST images."""
    torch.manual_seed(1)
    clf = Classifier(ClassifierConfig(dataset="mnist", image_size=16)).eval()
    return save_classifier(clf, tmp_path / "clf", {})


def quality(model_dir, data_dir, report, *flags):
    return run("sample-quality", model_dir, data_dir, "--nsamples", "6", "--k", "1",
               "--report", str(report), *flags)  # fmt: skip


def test_sample_quality_of_one_class_measures_against_that_class(labelled, classifier, tmp_path,
                                                                  capsys):  # fmt: skip
    model_dir = tiny(tmp_path / "m")
    report = tmp_path / "q.json"
    assert quality(model_dir, labelled, report, "--classifier", str(classifier), "--class",
                   "3") == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert r["class"] == "3" and r["n_reference"] == 2  # test images 3 and 13
    assert r["samples"]["n_images"] == 6 and r["train_floor"]["n_images"] == 4  # 3, 13, 23, 33
    a = r["accuracy"]
    assert a["classifier"] == str(classifier) and list(a["per_class"]) == ["3"]
    assert a["n_images"] == 6 and 0 <= a["overall"] <= 1 and a["overall"] == a["per_class"]["3"]
    out = capsys.readouterr().out
    assert "images of class '3'" in out and "class accuracy under the classifier" in out


def test_sample_quality_of_every_class(labelled, classifier, tmp_path, capsys):
    model_dir = tiny(tmp_path / "m")
    report = tmp_path / "q.json"
    # encoder features (the fastest), the classifier for the accuracy alone
    flags = ["--features", "encoder", "--classifier", str(classifier)]
    assert quality(model_dir, labelled, report, *flags, "--class", "all") == 0
    r = json.loads(report.read_text())
    assert r["class"] == "all" and r["n_reference"] == 20 and r["features"] == "encoder"
    assert r["samples"]["n_images"] == 60 and r["train_floor"]["n_images"] == 40
    assert list(r["per_class"]) == list(DIGITS)
    for entry in r["per_class"].values():
        assert entry["n_reference"] == 2 and entry["samples"]["n_images"] == 6
        assert entry["train_floor"]["n_images"] == 4
    a = r["accuracy"]
    assert a["n_per_class"] == dict.fromkeys(DIGITS, 6) and a["n_images"] == 60
    assert math.isclose(a["overall"], np.mean(list(a["per_class"].values())))
    out = capsys.readouterr().out
    assert "per class, against the reference images of the class" in out
    assert "(6 of each of 10 classes)" in out
    # one class's numbers are those of --class alone (the same samples)
    assert quality(model_dir, labelled, tmp_path / "one.json", *flags, "--class", "7") == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["samples"] == pytest.approx(r["per_class"]["7"]["samples"], rel=1e-4)
    assert one["accuracy"]["per_class"]["7"] == a["per_class"]["7"]


def test_sample_quality_of_classes_drawn_at_random(labelled, classifier, tmp_path):
    model_dir = tiny(tmp_path / "m")
    report = tmp_path / "q.json"
    assert quality(model_dir, labelled, report, "--classifier", str(classifier)) == 0
    r = json.loads(report.read_text())
    assert r["class"] is None and r["n_reference"] == 20 and r["samples"]["n_images"] == 6
    assert sum(r["accuracy"]["n_per_class"].values()) == 6
    # the model's own encoder (each image encoded with its class) and its reconstructions
    assert quality(model_dir, labelled, report, "--features", "encoder") == 0
    r = json.loads(report.read_text())
    assert r["features"] == "encoder" and "accuracy" not in r  # no classifier for mnist
    # (every reference image of the class is reconstructed: no --nsamples)
    assert run("sample-quality", model_dir, labelled, "--k", "1", "--report", str(report),
               "--classifier", str(classifier), "--features", "encoder", "--reconstructions",
               "--class", "2") == 0  # fmt: skip
    r = json.loads(report.read_text())
    assert r["what"] == "reconstructions" and r["samples"]["n_images"] == 2
    assert r["accuracy"]["n_per_class"] == {"2": 2}


def test_class_accuracy_maps_the_classifier_s_classes_by_name():
    classes = ("cat", "dog", "eel")
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    # the classifier's own order: dog, eel, cat, bird
    predicted = torch.tensor([2, 1, 0, 0, 1, 3])
    a = class_accuracy(predicted, labels, classes, ["dog", "eel", "cat", "bird"])
    assert a["per_class"] == {"cat": 0.5, "dog": 1.0, "eel": 0.5}
    assert math.isclose(a["overall"], 4 / 6) and a["n_per_class"] == dict.fromkeys(classes, 2)
    assert class_accuracy(predicted, labels, classes, ["dog", "cat"]) is None  # no eel


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--class", "x"], "unknown class 'x'; choose one of 0 '0', 1 '1'"),
        (["--class", "12"], "class 12 is not an index 0 to 9 nor a name"),
        (["--class=-1"], "class -1 is not an index 0 to 9 nor a name"),
        (
            ["--class", "all", "--k", "3"],
            "the reference's class '0' has 2 images; precision and recall need more than --k 3",
        ),
    ],
)
def test_sample_quality_refuses_bad_classes_in_one_line(labelled, tmp_path, capsys, flags,
                                                         message):  # fmt: skip
    model_dir = tiny(tmp_path / "m")
    assert quality(model_dir, labelled, tmp_path / "q.json", *flags) == 1
    one_line_error(capsys, message)
    assert not (tmp_path / "q.json").exists()


def test_an_unconditional_model_takes_no_class(labelled, tmp_path, capsys):
    model_dir = tiny(tmp_path / "m", classes=())
    for command, extra in [("sample-quality", ["--report", str(tmp_path / "q.json")]),
                           ("interpolate", []), ("traverse", []), ("manifold", [])]:  # fmt: skip
        assert run(command, model_dir, labelled, "--class", "3", *extra) == 1
        one_line_error(capsys, "is not conditional: it takes no class")


def drawn(out) -> np.ndarray:
    return np.asarray(Image.open(out / "interpolate.png"))


def picture(model, z, c, ends) -> np.ndarray:
    """The strip interpolate draws from code z[0] to z[1], decoded as class c, in 3 steps
    (enlarged as the PNG shows it, under its title)."""
    frames = to_uint8(latent.interpolate(model, z[0], z[1], 3, condition=c))
    return enlarged(strip(frames, list(ends)), frames.shape[1])[..., 0]


def same_strip(out, expected: np.ndarray) -> bool:
    """Whether the PNG in ``out`` shows ``expected`` below its title."""
    shown = drawn(out)
    return shown.shape[1] == expected.shape[1] and np.array_equal(
        shown[-expected.shape[0] :], expected
    )


def test_interpolate_decodes_the_path_as_a_class(labelled, tmp_path, capsys, caplog):
    model_dir = tiny(tmp_path / "m")
    model, images = load_model(model_dir), split(labelled)
    out = tmp_path / "pics"
    common = ["--outdir", str(out), "--steps", "3"]
    with caplog.at_level("INFO"):  # images 3 and 13 are both 3s: decoded as 3
        assert run("interpolate", model_dir, labelled, "--index", "3", "13", *common) == 0
    assert "decoding the path as class '3'" in caplog.text
    z = latent.encode_mean(model, images[[3, 13]], 3)
    assert same_strip(out, picture(model, z, 3, images[[3, 13]]))
    # images of two classes: --class says which; each end is encoded with its own class
    assert run("interpolate", model_dir, labelled, "--index", "0", "1", *common) == 1
    one_line_error(capsys, "the path starts from images of different classes: pass --class")
    assert run("interpolate", model_dir, labelled, "--index", "0", "1", "--class", "5",
               *common) == 0  # fmt: skip
    z = latent.encode_mean(model, images[[0, 1]], torch.tensor([0, 1]))
    assert same_strip(out, picture(model, z, 5, images[[0, 1]]))
    # random codes and image files say nothing of a class: --class is needed
    assert run("interpolate", model_dir, labelled, "--random", *common) == 1
    one_line_error(capsys, "this model is conditional: pass --class", "0 '0', 1 '1'")
    assert run("interpolate", model_dir, labelled, "--random", "--class", "2", *common) == 0
    files = []
    for i in (4, 9):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i][..., 0]).save(files[-1])
    assert run("interpolate", model_dir, labelled, "--images", *map(str, files), "--class",
               "sneaker", *common) == 1  # fmt: skip
    one_line_error(capsys, "unknown class 'sneaker'")
    assert run("interpolate", model_dir, labelled, "--images", *map(str, files), "--class", "4",
               *common) == 0  # fmt: skip


def test_traverse_manifold_and_embed_of_a_conditional_model(labelled, tmp_path, capsys, caplog):
    model_dir = tiny(tmp_path / "m")
    out = tmp_path / "pics"
    common = ["--outdir", str(out)]
    with caplog.at_level("INFO"):
        assert run("traverse", model_dir, labelled, "--index", "7", "--steps", "3", *common) == 0
    assert "decoding the traversal as class '7'" in caplog.text
    assert (out / "traverse.png").is_file()
    assert run("traverse", model_dir, labelled, "--steps", "3", *common) == 1  # the zero code
    one_line_error(capsys, "this model is conditional: pass --class")
    assert run("traverse", model_dir, labelled, "--steps", "3", "--class", "1", *common) == 0
    assert run("manifold", model_dir, labelled, "--grid", "3", *common) == 1
    one_line_error(capsys, "pass --class, the class to decode the grid as")
    assert run("manifold", model_dir, labelled, "--grid", "3", "--class", "1", *common) == 0
    assert (out / "manifold.png").is_file()
    assert run("embed", model_dir, labelled, *common) == 0
    assert (out / "embed.png").is_file()


def test_the_latent_functions_take_the_classes():
    model = tiny_model(latent_dims=2)
    images, y = torch.rand(6, 1, 16, 16), labels_of(6)
    means = latent.encode_mean(model, images, y)
    assert torch.allclose(means, model.encode(images, y).mu, atol=1e-6)
    assert not torch.allclose(means, latent.encode_mean(model, images, 0))
    with pytest.raises(TorchVaeError, match="this model is conditional"):
        latent.encode_mean(model, images)
    frames = latent.interpolate(model, means[0], means[1], 4, condition="3")
    assert torch.allclose(frames[0], model.decode(means[:1], 3)[0], atol=1e-6)
    assert latent.traverse(model, means[0], [0, 1], 3, condition=2).shape == (2, 3, 1, 16, 16)
    assert latent.manifold(model, 3, condition=1).shape == (3, 3, 1, 16, 16)
    assert torch.allclose(latent.embed(model, images, condition=y), means)
    assert latent.kl_per_dim(model, images, y).shape == (2,)


def test_the_explorer_maps_each_test_image_with_its_class(labelled, tmp_path):
    model_dir = tiny(tmp_path / "m")
    model = load_model(model_dir)
    ex = load_explorer(model, model_dir, "mnist", labelled, 0, progress=False)
    assert ex.conditional and ex.classes == list(DIGITS)
    assert ex.labels.tolist() == labels_of(20).tolist()
    want = latent.encode_mean(model, split(labelled), labels_of(20))
    assert torch.allclose(ex.means, want, atol=1e-4)
    other = tiny(tmp_path / "o", classes=("0", "1"))
    with pytest.raises(TorchVaeError, match="mnist has the class '2', which the model does not"):
        load_explorer(load_model(other), other, "mnist", labelled, 0, progress=False)


def test_label_files_out_of_range_or_of_another_length_are_one_line(mnist_dir, tmp_path, capsys):
    """Uncompressed label files (not checked by MD5) with labels outside the dataset's classes,
    or fewer labels than images: training a conditional model names the file or the counts
    (it was a traceback in the middle of the run, and "no class for every image")."""
    import gzip

    from fakedata import idx_bytes

    raw = mnist_dir / "mnist"
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
        (raw / f"{name}.gz").unlink()
    n_test = len(split(mnist_dir))
    labels = {"train": np.arange(40) % 10, "t10k": np.arange(n_test) % 10}
    labels["train"][3] = 14
    for prefix, arr in labels.items():
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(arr.astype(np.uint8)))
    flags = ["train", "--dataset", "mnist", "--data_dir", str(mnist_dir), "--conditional",
             "--image_size", "16", "--arch", "dcgan", "--depth", "2", "--max_filters", "8",
             "--epochs", "1", "--max_steps", "1", "--batchsize", "4", "--cpu",
             "--quiet"]  # fmt: skip
    assert main([*flags, "--run_dir", str(tmp_path / "a")]) == 1
    one_line_error(capsys, "train-labels-idx1-ubyte gives image 3 the label 14",
                   "labels are 0 to 9", "not the official file")  # fmt: skip
    labels["train"] = labels["train"][:30] % 10
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels["train"].astype(np.uint8)))
    assert main([*flags, "--run_dir", str(tmp_path / "b")]) == 1
    one_line_error(capsys, "split has 30 labels for 40 images")


def test_conditional_on_a_folder_of_one_class_subfolder_says_it_has_one(tmp_path, capsys):
    from fakedata import write_folder

    write_folder(tmp_path / "one" / "a", n=12, gray=True)
    assert main(["train", "--dataset", f"folder:{tmp_path / 'one'}", "--conditional",
                 "--max_steps", "1", "--image_size", "16", "--depth", "2", "--max_filters", "8",
                 "--run_dir", str(tmp_path / "run"), "--quiet"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"torch-vae: error: --conditional needs two classes or more; folder:"
                   f"{(tmp_path / 'one').resolve()} has one, its subfolder 'a' (a folder's "
                   "classes are its subfolders: add one per class)"]  # fmt: skip
    assert not (tmp_path / "run").exists()
