"""``dqemu build-guest``: the Linux test guest, built from Debian packages and guests/linux.

An image is a Debian kernel (``vmlinuz``) plus an initramfs holding static busybox, our
``init``, the test scripts, our static C test programs and the kernel modules the recipe
names. Images are cached outside the repository, keyed by the exact package versions and
hashes and by every file of the recipe.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import toml

from cluster.cache import content_key, locked
from cluster.errors import DqemuError
from cluster.paths import GUESTS_DIR, cache_root

RECIPE_DIR = GUESTS_DIR / "linux"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError as exc:
        raise DqemuError(f"{what}: {cmd[0]} not found") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DqemuError(f"{what} failed: {last}")
    return proc.stdout


def resolve_package(name: str) -> Package:
    """Resolve a (possibly meta) package to the concrete one apt would install."""
    show = _run(["apt-cache", "show", "--no-all-versions", name], f"apt-cache show {name}")
    fields = _fields(show)
    if name.startswith("linux-image-") and not re.search(r"\d+\.\d+", name) and "Depends" in fields:
        # A metapackage (no version in its name): follow its linux-image dependency.
        for dep in fields["Depends"].split(","):
            dep_name = dep.strip().split()[0]
            if dep_name.startswith("linux-image-"):
                return resolve_package(dep_name)
    if "SHA256" not in fields or "Version" not in fields:
        raise DqemuError(f"apt knows no installable package {name} (run scripts/bootstrap)")
    return Package(name, fields["Version"], fields["SHA256"])


def _fields(stanza: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in stanza.splitlines():
        if not line.strip():
            break
        if line[0].isspace() or ":" not in line:
            continue
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _recipe_files() -> list[Path]:
    return sorted(p for p in RECIPE_DIR.rglob("*") if p.is_file())


def image_key(flavour: str, packages: list[Package]) -> str:
    parts: list[tuple[str, bytes]] = [("flavour", flavour.encode())]
    for pkg in packages:
        parts.append((f"pkg:{pkg.name}", f"{pkg.version} {pkg.sha256}".encode()))
    for path in _recipe_files():
        parts.append((f"file:{path.relative_to(RECIPE_DIR)}", path.read_bytes()))
        parts.append((f"mode:{path.relative_to(RECIPE_DIR)}", oct(path.stat().st_mode).encode()))
    return content_key(parts)


def load_recipe(flavour: str) -> tuple[str, list[str], str]:
    recipe = toml.loads((RECIPE_DIR / "recipe.toml").read_text())
    flavours = recipe.get("flavours", {})
    if flavour not in flavours:
        known = ", ".join(sorted(flavours))
        raise DqemuError(f"unknown guest flavour {flavour!r} (known: {known})")
    f = flavours[flavour]
    return f["kernel_package"], list(f.get("modules", [])), recipe["common"]["busybox_package"]


def _download(pkg: Package, dl: Path) -> Path:
    dl.mkdir(parents=True, exist_ok=True)
    existing = [p for p in dl.glob(f"{pkg.name}_*.deb") if _deb_version(p) == pkg.version]
    if existing:
        return existing[0]
    _run(
        ["apt-get", "download", "-o", "APT::Sandbox::User=root", f"{pkg.name}={pkg.version}"],
        f"downloading {pkg.name} {pkg.version}",
        cwd=dl,
    )
    found = [p for p in dl.glob(f"{pkg.name}_*.deb") if _deb_version(p) == pkg.version]
    if not found:
        raise DqemuError(f"apt-get download {pkg.name} left no .deb in {dl}")
    return found[0]


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"], f"reading {deb.name}").strip()


def _module_closure(moddir: Path, wanted: list[str]) -> list[str]:
    """Module paths (relative to moddir) for ``wanted`` and everything they depend on."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
    out: list[str] = []

    def visit(path: str) -> None:
        if path in out:
            return
        for dep in deps.get(path, []):
            visit(dep)
        out.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            continue  # built into this kernel, or absent from this flavour
        visit(path)
    return out


def _build_programs(dest: Path) -> None:
    for src in sorted((RECIPE_DIR / "programs").glob("*.c")):
        _run(
            [
                "gcc",
                "-static",
                "-O2",
                "-Wall",
                "-Werror",
                "-pthread",
                "-o",
                str(dest / src.stem),
                str(src),
            ],
            f"compiling guest program {src.name}",
        )


def _cpio(root: Path, out: Path) -> None:
    files = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
    ).stdout
    proc = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
        cwd=root,
        input=files,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DqemuError(f"cpio failed: {proc.stderr.decode().strip()}")
    with gzip.open(out, "wb", compresslevel=6) as f:
        f.write(proc.stdout)


def build_image(
    flavour: str, entry: Path, kernel_pkg: Package, busybox_pkg: Package, modules: list[str]
) -> None:
    dl = cache_root() / "dl"
    kdeb = _download(kernel_pkg, dl)
    bdeb = _download(busybox_pkg, dl)
    with tempfile.TemporaryDirectory(prefix="dqemu-guest-") as tmp:
        t = Path(tmp)
        _run(["dpkg-deb", "-x", str(kdeb), str(t / "k")], f"unpacking {kdeb.name}")
        _run(["dpkg-deb", "-x", str(bdeb), str(t / "b")], f"unpacking {bdeb.name}")
        vmlinuz = sorted((t / "k" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise DqemuError(f"{kdeb.name} contains no /boot/vmlinuz-*")
        kver = vmlinuz[0].name.removeprefix("vmlinuz-")
        root = t / "root"
        for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "etc", "tests"):
            (root / d).mkdir(parents=True)
        shutil.copy2(t / "b" / "bin" / "busybox", root / "bin" / "busybox")
        shutil.copy2(RECIPE_DIR / "init", root / "init")
        for test in sorted((RECIPE_DIR / "tests").iterdir()):
            shutil.copy2(test, root / "tests" / test.name)
        _build_programs(root / "bin")
        moddir = t / "k" / "lib" / "modules" / kver
        # The package ships no modules.dep: its postinst runs depmod on install.
        depmod = shutil.which("depmod", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if depmod is None:
            raise DqemuError("depmod not found (apt-get install kmod, or run scripts/bootstrap)")
        _run([depmod, "-b", str(t / "k"), kver], "depmod")
        mods = _module_closure(moddir, modules)
        dest_mod = root / "lib" / "modules" / kver
        dest_mod.mkdir(parents=True)
        for rel in mods:
            (dest_mod / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(moddir / rel, dest_mod / rel)
        depmap = {
            line.partition(":")[0]: line
            for line in (moddir / "modules.dep").read_text().splitlines()
        }
        (dest_mod / "modules.dep").write_text("".join(depmap[m] + "\n" for m in mods))
        names = [
            Path(m).name.split(".ko")[0]
            for m in mods
            if Path(m).name.split(".ko")[0].replace("-", "_")
            in {w.replace("-", "_") for w in modules}
        ]
        (root / "etc" / "modules").write_text("".join(n + "\n" for n in names))
        stage = entry.with_name(entry.name + ".tmp")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        shutil.copy2(vmlinuz[0], stage / "vmlinuz")
        _cpio(root, stage / "initrd.img")
        (stage / "kernel-version").write_text(kver + "\n")
        shutil.rmtree(entry, ignore_errors=True)
        stage.rename(entry)


def ensure_guest(flavour: str = "cloud") -> GuestImage:
    kernel_name, modules, busybox_name = load_recipe(flavour)
    kernel_pkg = resolve_package(kernel_name)
    busybox_pkg = resolve_package(busybox_name)
    key = image_key(flavour, [kernel_pkg, busybox_pkg])
    base = cache_root() / "guests"
    entry = base / f"{flavour}-{key}"
    if not (entry / "initrd.img").exists():
        with locked(base / ".lock"):
            if not (entry / "initrd.img").exists():
                print(
                    f"dqemu-guest: building the {flavour} guest ({kernel_pkg.name} "
                    f"{kernel_pkg.version})",
                    file=sys.stderr,
                )
                build_image(flavour, entry, kernel_pkg, busybox_pkg, modules)
    return GuestImage(
        entry / "vmlinuz", entry / "initrd.img", (entry / "kernel-version").read_text().strip()
    )


def _cmd(args: argparse.Namespace) -> int:
    img = ensure_guest(args.flavour)
    if args.print_path:
        print(img.kernel)
        print(img.initrd)
    else:
        print(
            f"dqemu-guest: kernel {img.kernel_version}: {img.kernel} {img.initrd}", file=sys.stderr
        )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "build-guest",
        help="build (or find in the cache) the Linux test guest's kernel and initramfs",
    )
    p.add_argument("--flavour", default="cloud", help="guest flavour in guests/linux/recipe.toml")
    p.add_argument("--print-path", action="store_true", help="print the kernel and initrd paths")
    p.set_defaults(func=_cmd)
