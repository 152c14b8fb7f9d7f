"""Model files: our safetensors bundle with a JSON card, and the official FastAvatar release.

**Our bundle** (a folder; the default model ships inside the package, nothing is downloaded)::

    decoder.safetensors   every FastAvatarDecoder tensor (official names + base_means, and
                          linear_mean / linear_basis for a decoder with a linear basis)
    encoder.safetensors   the projector and temperature
    codes.safetensors     the training subjects' codes w_i (for tests and editing)
    model_card.json       data, terms, commands, hyper-parameters, metrics, revision, device

Tensors may be stored as float16 to keep the package small; they load as float32.

**Official release** (``decoder_neutral_flame.pth``, ``encoder_neutral_flame.pth``,
``averaged_model.ply``): ``torch.save({"model_dict": state_dict})`` pickles, read only with
``torch.load(..., weights_only=True)``. Template positions come from ``averaged_model.ply`` (the
release predicts them per image with a separate DINOv2 geometry model, which is not supported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..render.types import GaussianTensors
from .decoder import BASIS_FIELDS, FastAvatarDecoder
from .encoder import FastAvatarEncoder

#: Where the default model lives inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "weights" / "default_v2"


class ModelLoadError(ValueError):
    """A weights file is missing, unreadable, or of another layout; the message names the file."""


@dataclass
class FastAvatarModel:
    """A decoder + encoder pair with its card.

    ``decoder``: :class:`FastAvatarDecoder`; ``encoder``: :class:`FastAvatarEncoder` (eval mode);
    ``card``: the model card dict; ``codes``: training-subject codes {name: [512] tensor};
    ``embedder``: which identity backbone the encoder expects ('dlib' or 'arcface').
    """

    decoder: FastAvatarDecoder
    encoder: FastAvatarEncoder
    card: dict = field(default_factory=dict)
    codes: dict = field(default_factory=dict)
    embedder: str = "dlib"
    #: the bundle folder it was loaded from (None: built in memory or the official release)
    folder: Path | None = None

    @property
    def model_id(self) -> str:
        """The card's ``model_id`` ('unknown' when absent)."""
        return str(self.card.get("model_id", "unknown"))

    @property
    def code_dim(self) -> int:
        """Length of the latent code w (512 for the default and the official models)."""
        return self.decoder.code_dim

    def to(self, device) -> "FastAvatarModel":
        """Move decoder and encoder to ``device`` (in place); returns ``self``."""
        self.decoder.to(device)
        self.encoder.to(device)
        return self

    def check_code(self, w) -> torch.Tensor:
        """``w`` as a float32 tensor [code_dim] on the decoder's device; ValueError naming the problem."""
        t = torch.as_tensor(np.asarray(w, dtype=np.float32) if not isinstance(w, torch.Tensor) else w)
        if t.ndim != 1 or t.shape[0] != self.code_dim:
            raise ValueError(f"code w: expected {self.code_dim} values, got shape {list(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("code w: contains non-finite values")
        return t.to(self.decoder.base_means.device, torch.float32)

    @torch.no_grad()
    def encode(self, embedding) -> torch.Tensor:
        """Code w [code_dim] from one identity embedding [in_dim] (unit norm)."""
        e = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).to(self.decoder.base_means.device)
        self.encoder.eval()
        return self.encoder(e)

    def decode(self, w, head=None, expression=None) -> GaussianTensors:
        """Gaussians (head frame, metres) for code ``w``; differentiable when w or weights need grad.

        ``head``: None (the model's own template) or identity coefficients [100] of the head
        model: the template bound to that person's head (:meth:`decoder_for`). ``expression``:
        None (the template's rest expression) or the 53 ARKit coefficients in [0,1] (head model
        order) the bound template takes; needs the head model. A blink also raises the opacity
        of the eyes' core Gaussians (:meth:`~fastavatar_engine.head.template.BoundTemplate.opacity_offsets`)."""
        g = self.decoder_for(head, expression)(self.check_code(w))
        off = None if expression is None else self.head_template.opacity_offsets(expression)
        if off is not None:
            rows = torch.as_tensor(off[0], device=g.opacity_logits.device)
            delta = torch.as_tensor(off[1], dtype=g.opacity_logits.dtype, device=g.opacity_logits.device)
            g = replace(g, opacity_logits=g.opacity_logits.index_add(0, rows, delta))
        return g

    @property
    def head_template(self):
        """The template bound to the head model (:class:`~fastavatar_engine.head.template.BoundTemplate`,
        built on first use, ~0.5 s), or None when the head model's data is unavailable."""
        if "_head_template" not in self.__dict__:
            try:
                from ..head.template import BoundTemplate

                d = self.decoder
                self.__dict__["_head_template"] = BoundTemplate(d.base_means.cpu(), d.base_scales.cpu(),
                                                                d.base_rotations.cpu())
            except FileNotFoundError:
                self.__dict__["_head_template"] = None
        return self.__dict__["_head_template"]

    def decoder_for(self, head=None, expression=None):
        """The decoder whose template sits on the head with identity coefficients ``head`` [100]
        (None: the template's own identity) and expression coefficients ``expression`` [53]
        (None: the rest expression); both None, or no head model and no expression: the decoder
        itself. Shares the weights; the deformed template is cached for the last head and
        expression asked for. Raises ``ValueError`` for malformed coefficients, or an expression
        without the head model."""
        if expression is None and (head is None or self.head_template is None):
            return self.decoder
        if self.head_template is None:
            raise ValueError("expressions need the head model (fastavatar_engine/data/ict_head.safetensors)")
        key = (None if head is None else np.asarray(head, dtype=np.float64).ravel(),
               None if expression is None else np.asarray(expression, dtype=np.float64).ravel())
        cached = self.__dict__.get("_head_decoder")
        if cached is not None and cached[1] is self.decoder and all(
                (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape
                                              and np.array_equal(a, b)) for a, b in zip(cached[0], key)):
            return cached[2]
        mu, ls, rot = self.head_template.deform(identity=key[0], expression=key[1])
        dec = self.decoder.with_base(mu, ls, rot)
        self.__dict__["_head_decoder"] = (tuple(None if k is None else k.copy() for k in key), self.decoder, dec)
        return dec

    # ------------------------------------------------------------------ our bundle
    def save(self, folder, dtype=torch.float16) -> Path:
        """Write the bundle to ``folder`` (tensors cast to ``dtype``; a linear basis stored as int8,
        :func:`_quantize_basis`); returns the folder.

        Each file is written under a temporary name and renamed, so an interrupted save never
        leaves a truncated weights file.
        """
        from safetensors.torch import save_file

        from ..ply import _atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        def cast(sd):
            return {k: v.detach().to("cpu", v.dtype if k in _KEEP_DTYPE else dtype).contiguous() for k, v in sd.items()}

        tensors = {"decoder": _quantize_basis(self.decoder.state_dict()), "encoder": self.encoder.state_dict(),
                   "codes": self.codes}
        for name, sd in tensors.items():
            if sd:
                _atomic_write(folder / f"{name}.safetensors", lambda tmp, sd=sd: save_file(cast(sd), tmp))
        card = dict(self.card)
        card.setdefault("embedder", self.embedder)
        card["encoder_in_dim"] = self.encoder.in_dim
        card["num_gaussians"] = self.decoder.num_gaussians
        card["code_dim"] = self.code_dim
        text = json.dumps(card, indent=2) + "\n"
        _atomic_write(folder / "model_card.json", lambda tmp: Path(tmp).write_text(text))
        return folder

    @classmethod
    def load(cls, folder=None, device="cpu") -> "FastAvatarModel":
        """Load a bundle (default: the model inside the package). Raises :class:`ModelLoadError`."""
        folder = Path(folder) if folder is not None else DEFAULT_MODEL_DIR
        if not folder.is_dir():
            raise ModelLoadError(f"{folder}: model folder not found")
        card_path = folder / "model_card.json"
        try:
            card = json.loads(card_path.read_text())
        except FileNotFoundError as exc:
            raise ModelLoadError(f"{card_path}: model card not found") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{card_path}: cannot read model card ({exc})") from exc
        dec_sd = _read_safetensors(folder / "decoder.safetensors")
        enc_sd = _read_safetensors(folder / "encoder.safetensors")
        decoder = _decoder_from_state(dec_sd, folder / "decoder.safetensors")
        encoder = _encoder_from_state(enc_sd, folder / "encoder.safetensors")
        _check_pair(decoder, encoder, str(folder))
        codes = _read_safetensors(folder / "codes.safetensors") if (folder / "codes.safetensors").is_file() else {}
        model = cls(decoder, encoder, card, {k: v.float() for k, v in codes.items()}, card.get("embedder", "dlib"),
                    folder)
        return model.to(device)

    # ------------------------------------------------------------------ official release
    @classmethod
    def load_official(cls, decoder_pth, encoder_pth, averaged_ply, device="cpu") -> "FastAvatarModel":
        """Load the official release files (pickles read with ``weights_only=True``).

        Raises :class:`ModelLoadError` naming the file for a missing file, a file that is not a
        ``{"model_dict": state_dict}`` checkpoint, or keys/shapes of another layout.
        """
        from ..ply import PlyFormatError, read_ply

        dec_sd = _read_official(decoder_pth)
        enc_sd = _read_official(encoder_pth)
        try:
            template = read_ply(averaged_ply)
        except (PlyFormatError, ValueError) as exc:
            raise ModelLoadError(f"{averaged_ply}: cannot read the averaged model ({exc})") from exc
        if "gaussian_embeddings.weight" not in dec_sd:
            raise ModelLoadError(f"{decoder_pth}: not a FastAvatar decoder checkpoint (no gaussian_embeddings.weight; "
                                 f"keys start {sorted(dec_sd)[:3]})")
        k = dec_sd["gaussian_embeddings.weight"].shape[0]
        if template.count != k:
            raise ModelLoadError(f"{averaged_ply}: {template.count} Gaussians, but {decoder_pth} has {k} embeddings")
        dec_sd = dict(dec_sd)
        dec_sd["base_means"] = torch.as_tensor(template.means)
        decoder = _decoder_from_state(dec_sd, Path(decoder_pth))
        encoder = _encoder_from_state(enc_sd, Path(encoder_pth))
        _check_pair(decoder, encoder, f"{decoder_pth} + {encoder_pth}")
        card = {"model_id": "fastavatar-official-neutral-flame", "source": "official FastAvatar release",
                "embedder": "arcface"}
        return cls(decoder, encoder, card, {}, "arcface").to(device)


# ---------------------------------------------------------------------- helpers
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_official(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for foreign pickles, RuntimeError for corrupt zips, ...
        raise ModelLoadError(f"{path}: not a loadable checkpoint with weights_only=True ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("model_dict"), dict):
        raise ModelLoadError(f"{path}: expected a {{'model_dict': state_dict}} checkpoint (official FastAvatar layout)")
    sd = obj["model_dict"]
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: non-tensor entries in model_dict: {bad[:5]}")
    return sd


def _check_state(module: torch.nn.Module, sd: dict, path: Path, optional=()) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in expected and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {list(sd[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    if wrong:
        problems.append(f"wrong shapes {wrong[:4]}")
    if problems:
        raise ModelLoadError(f"{path}: not a {type(module).__name__} of this layout: " + "; ".join(problems))
    nonfinite = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ModelLoadError(f"{path}: non-finite values in {nonfinite[:5]}")


#: state-dict entries written in their own dtype by :meth:`FastAvatarModel.save`
_KEEP_DTYPE = ("linear_basis_int8", "linear_basis_scale")


def _quantize_basis(sd: dict) -> dict:
    """``sd`` with ``linear_basis`` [N,K,10] replaced by ``linear_basis_int8`` [N,K,10] int8 and
    ``linear_basis_scale`` [N,10] float32 (per component and column, max |value| / 127): half the
    size of float16 (default v2.1: 24.8 -> 12.4 MiB). The decode error this makes is in the README
    (*Default model v2.1*); :func:`_dequantize_basis` undoes it."""
    if "linear_basis" not in sd:
        return sd
    b = sd["linear_basis"].detach().float().cpu()
    scale = b.abs().amax(1).clamp_min(1e-12) / 127.0
    out = {k: v for k, v in sd.items() if k != "linear_basis"}
    out["linear_basis_int8"] = torch.round(b / scale[:, None, :]).clamp(-127, 127).to(torch.int8)
    out["linear_basis_scale"] = scale
    return out


def _dequantize_basis(sd: dict, path: Path) -> dict:
    """``sd`` with an int8 basis (:func:`_quantize_basis`) turned back into a float ``linear_basis``.
    Raises :class:`ModelLoadError` for mismatched shapes, another dtype or non-finite scales."""
    if "linear_basis_int8" not in sd and "linear_basis_scale" not in sd:
        return sd
    q, scale = sd.get("linear_basis_int8"), sd.get("linear_basis_scale")
    if q is None or scale is None or q.dtype != torch.int8 or q.ndim != 3 or scale.ndim != 2 \
            or tuple(scale.shape) != (q.shape[0], q.shape[2]) or not bool(torch.isfinite(scale.float()).all()):
        raise ModelLoadError(f"{path}: int8 linear basis of shapes {None if q is None else list(q.shape)} / "
                             f"{None if scale is None else list(scale.shape)}: expected int8 [N,K,F] and finite [N,F]")
    out = {k: v for k, v in sd.items() if k not in _KEEP_DTYPE}
    out["linear_basis"] = q.float() * scale.float()[:, None, :]
    return out


def _decoder_from_state(sd: dict, path: Path) -> FastAvatarDecoder:
    sd = _dequantize_basis(sd, path)
    try:
        k = int(sd["gaussian_embeddings.weight"].shape[0])
        embed_dim = int(sd["gaussian_embeddings.weight"].shape[1])
        code_dim = int(sd["conditioning_mlp.shared_body.0.weight"].shape[1]) - embed_dim
    except (KeyError, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a FastAvatar decoder (missing {exc})") from exc
    if not 0 < k <= 2_000_000 or code_dim <= 0:
        raise ModelLoadError(f"{path}: implausible sizes K={k}, code dim {code_dim}")
    shapes = {"base_means": (k, 3), "base_scales": (k, 3), "base_rotations": (k, 4), "base_opacity": (k,),
              "base_sh0": (k, 1, 3), "base_shN": (k, 15, 3)}
    for name, shape in shapes.items():
        if name not in sd:
            raise ModelLoadError(f"{path}: missing {name}")
        if tuple(sd[name].shape) != shape:
            raise ModelLoadError(f"{path}: {name} has shape {list(sd[name].shape)}, expected {list(shape)}")
    template = GaussianTensors(sd["base_means"].float(), sd["base_scales"].float(), sd["base_rotations"].float(),
                               sd["base_opacity"].float(), torch.cat([sd["base_sh0"], sd["base_shN"]], 1).float())
    n_basis = 0
    if "linear_basis" in sd or "linear_mean" in sd:  # default v2's linear basis (decoder module doc)
        lb, lm = sd.get("linear_basis"), sd.get("linear_mean")
        if lb is None or lm is None or lb.ndim != 3 or tuple(lb.shape[1:]) != (k, BASIS_FIELDS) \
                or tuple(lm.shape) != (k, BASIS_FIELDS) or not 0 < lb.shape[0] <= code_dim:
            raise ModelLoadError(f"{path}: linear basis of shapes {None if lb is None else list(lb.shape)} / "
                                 f"{None if lm is None else list(lm.shape)}, expected [N<={code_dim},{k},{BASIS_FIELDS}]"
                                 f" / [{k},{BASIS_FIELDS}]")
        n_basis = int(lb.shape[0])
    decoder = FastAvatarDecoder(template, code_dim=code_dim, embed_dim=embed_dim, basis_components=n_basis)
    _check_state(decoder, sd, path)
    decoder.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return decoder.eval()


def _encoder_from_state(sd: dict, path: Path) -> FastAvatarEncoder:
    try:
        in_dim = int(sd["projector.0.weight"].shape[1])
        code_dim = int(sd["projector.11.weight"].shape[0])
    except (KeyError, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a FastAvatar encoder (missing {exc})") from exc
    encoder = FastAvatarEncoder(in_dim=in_dim, code_dim=code_dim)
    sd = dict(sd)
    if "temperature" in sd and sd["temperature"].ndim == 1 and sd["temperature"].numel() == 1:
        sd["temperature"] = sd["temperature"].reshape(())
    _check_state(encoder, sd, path)
    encoder.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, strict=False)
    return encoder.eval()


def _check_pair(decoder: FastAvatarDecoder, encoder: FastAvatarEncoder, where: str) -> None:
    if encoder.code_dim != decoder.code_dim:
        raise ModelLoadError(f"{where}: the encoder outputs {encoder.code_dim}-D codes but the decoder takes "
                             f"{decoder.code_dim}-D codes")
