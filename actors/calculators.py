"""ASE calculators by name, with the elements each handles and a per-process model cache.

    calc = make_calculator("emt")
    calc = make_calculator("chgnet", {"model_name": "0.3.0", "device": "cpu"})
    calc = make_calculator("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.01})
    calculator_elements("emt")        # frozenset of symbols, or None when the calculator does not say

Names
    * ``emt``: ASE's EMT (Al, Cu, Ag, Au, Ni, Pd, Pt and H, C, N, O).
    * ``chgnet``: the CHGNet universal potential (``pip install -e ".[mlip]"``; the weights ship in
      the wheel, nothing is downloaded). ``calculator_kwargs``: ``model_name`` ('0.3.0' default,
      '0.2.0', 'r2scan'), ``device`` ('auto' default: CUDA when this process sees a GPU, else
      'cpu'; or 'cpu', 'cuda', 'cuda:1'), ``on_isolated_atoms`` ('ignore' default, 'warn', 'error').
    * ``module:Class`` or ``module.Class``: any importable ASE calculator class (or a function
      returning one), called with ``calculator_kwargs``. It may declare the symbols it handles
      as a ``supported_elements`` attribute; otherwise structures are not checked for elements.
      Generic pair potentials whose defaults are placeholders (:data:`PLACEHOLDER_PARAMETERS`:
      ASE's LennardJones σ = 1 Å, ε = 1 eV; MorsePotential) are refused unless
      ``calculator_kwargs`` sets those parameters: their defaults fit no real element; their
      lengths and energies must be positive numbers (:data:`POSITIVE_PARAMETERS`).
      What the name builds must be an ASE calculator (``BaseCalculator``); anything else is
      refused before it is used.

Keyword arguments an ASE calculator would store and never read (a key outside its
``default_parameters`` for a class that keeps ASE's ``set``, EMT's included) are refused.

Trust: a calculator name that comes from data (a checkpoint's config, a run directory's
config.toml on ``--resume``) is used only when it is built in; a ``module:Class`` there is
refused (:func:`refuse_untrusted`) unless the user names it on the command line or passes
:data:`TRUST_FLAG`, so a file someone sends never makes relaxrl import or call anything.
Keyword arguments from data go to built-in calculators only, under the same rule.

Errors name the setting the user chose the calculator with: ``env.calculator`` /
``env.calculator_kwargs`` by default, ``--calculator`` / ``--calculator-kwargs`` when
`relaxrl relax` or `eval` pass ``option="--calculator"``.

Model cache: an MLIP's model is loaded once per process and key (name + kwargs) and shared
by every calculator built from it, so the environments of one actor share one model.
Each environment still gets its own light calculator object (its own results cache).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ase.calculators.calculator import BaseCalculator, Calculator
from ase.calculators.emt import EMT, parameters
from ase.data import chemical_symbols

from common.errors import RelaxRLError

__all__ = ["BUILTIN", "BUILTIN_DEFAULTS", "PLACEHOLDER_PARAMETERS", "POSITIVE_PARAMETERS", "TRUST_FLAG",
           "CalculatorError", "UntrustedCalculatorError", "calculator_elements", "clear_model_cache", "is_builtin",
           "kwargs_option", "make_calculator", "model_cache_info", "refuse_untrusted", "resolve_calculator"]


class CalculatorError(RelaxRLError):
    """The calculator named in the config cannot be built or fails on the initial structure."""


class UntrustedCalculatorError(CalculatorError):
    """A checkpoint or a run's config.toml names a calculator that is not built in, and the user did not name it."""


TRUST_FLAG = "--trust-checkpoint-calculator"
"""The flag with which the user lets relaxrl import the ``module:Class`` a checkpoint (or a resumed run's
config.toml) names and call it with the keyword arguments stored there."""


MLIP_INSTALL = 'pip install -e ".[mlip]" -c constraints.txt'
"""What to run when a built-in MLIP's package is missing."""

_CHGNET_KWARGS = {"model_name": "0.3.0", "device": "auto", "on_isolated_atoms": "ignore"}
_CHGNET_MODELS = ("0.3.0", "0.2.0", "r2scan")
# CHGNet's composition model and species embedding cover Z = 1..94 (MPtrj).
_CHGNET_ELEMENTS = frozenset(chemical_symbols[1:95])

_cache: dict[str, Any] = {}
_cache_lock = threading.Lock()
_cache_loads: dict[str, int] = {}


def _key(name: str, kwargs: dict) -> str:
    return name + json.dumps(kwargs, sort_keys=True, default=repr)


def _cached(name: str, kwargs: dict, load: Callable[[], Any]) -> Any:
    """``load()`` once per process and (name, kwargs); later calls return the same object."""
    key = _key(name, kwargs)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load()
            _cache_loads[key] = _cache_loads.get(key, 0) + 1
        return _cache[key]


def model_cache_info() -> dict[str, int]:
    """How many times each cached model was loaded in this process (1 each, unless cleared)."""
    return dict(_cache_loads)


def clear_model_cache() -> None:
    """Forget the cached models (tests; freeing GPU memory)."""
    with _cache_lock:
        _cache.clear()
        _cache_loads.clear()


# ----------------------------------------------------------------------------- built-ins


def _emt(kwargs: dict) -> Calculator:
    _check_kwargs("emt", EMT, kwargs, "env.calculator_kwargs")
    return EMT(**kwargs)


def _chgnet_device(device: str) -> str:
    import torch  # only CHGNet needs torch here: an EMT environment (RelaxEnv, structure checks) loads none

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CalculatorError(f"env.calculator_kwargs.device = {device!r} but this process sees no CUDA device; "
                              "use 'auto' or 'cpu', or give the actors a GPU with actors.num_gpus")
    if device != "cpu" and not device.startswith("cuda"):
        raise CalculatorError(f"env.calculator_kwargs.device = {device!r} for 'chgnet'; use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def _chgnet(kwargs: dict) -> Calculator:
    unknown = sorted(set(kwargs) - set(_CHGNET_KWARGS))
    if unknown:
        raise CalculatorError(f"calculator 'chgnet' got unknown env.calculator_kwargs {', '.join(unknown)}; "
                              f"valid: {', '.join(f'{k} (default {v!r})' for k, v in _CHGNET_KWARGS.items())}")
    opts = {**_CHGNET_KWARGS, **kwargs}
    if opts["model_name"] not in _CHGNET_MODELS:
        raise CalculatorError(f"env.calculator_kwargs.model_name = {opts['model_name']!r} for 'chgnet'; "
                              f"the chgnet wheel ships {', '.join(_CHGNET_MODELS)}")
    # chgnet is optional (the mlip extra)
    try:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as e:
        raise CalculatorError(f"calculator 'chgnet' needs the chgnet package ({e}); install it with {MLIP_INSTALL}") from None
    device = _chgnet_device(str(opts["device"]))
    # chgnet turns cell volumes that require grad into a tensor on every call; torch warns once per process
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar",
                            category=UserWarning)

    def load() -> Any:
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its banner
            return CHGNet.load(model_name=opts["model_name"], use_device=device, verbose=False)

    model = _cached("chgnet", {"model_name": opts["model_name"], "device": device}, load)
    with contextlib.redirect_stdout(io.StringIO()):  # "CHGNet will run on cpu"
        return CHGNetCalculator(model=model, use_device=device, on_isolated_atoms=opts["on_isolated_atoms"])


PLACEHOLDER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "ase.calculators.lj.LennardJones": ("sigma", "epsilon"),
    "ase.calculators.morse.MorsePotential": ("epsilon", "r0", "rho0"),
}
"""Calculator classes (module.qualname) whose default parameters are placeholders, and the
parameters ``calculator_kwargs`` must set for them (σ = 1 Å, ε = 1 eV fit no element)."""

POSITIVE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "ase.calculators.lj.LennardJones": ("sigma", "epsilon", "rc", "ro"),
    "ase.calculators.morse.MorsePotential": ("epsilon", "r0", "rho0", "rcut1", "rcut2"),
}
"""Parameters that, when given, must be finite numbers > 0 (a negative σ or ε turns the potential inside out:
every structure then 'converges' in 0 steps or flies apart)."""

_CALCULATOR_INIT = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")
"""The keyword arguments ase.calculators.calculator.Calculator.__init__ itself takes."""

BUILTIN: dict[str, Callable[[dict], Calculator]] = {"emt": _emt, "chgnet": _chgnet}
"""Short calculator names (lower case) and their builders."""
BUILTIN_DEFAULTS: dict[str, dict] = {"emt": {}, "chgnet": dict(_CHGNET_KWARGS)}
"""The keyword arguments each short name uses when calculator_kwargs leaves them out."""


def _class_key(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _check_kwargs(name: str, cls: Any, kwargs: dict, kw_option: str) -> None:
    """Refuse keys an ASE calculator class would store in ``parameters`` and never read, and bad pair parameters.

    Only classes that keep ASE's own ``Calculator.set`` and list ``default_parameters`` are checked
    for unknown keys (their constructor accepts any key silently); other callables refuse unknown
    keys themselves (TypeError) or do not say which they read.
    """
    if isinstance(cls, type) and issubclass(cls, Calculator) and cls.set is Calculator.set:
        defaults = dict(getattr(cls, "default_parameters", None) or {})
        try:
            params = inspect.signature(cls.__init__).parameters.values()
        except (TypeError, ValueError):
            params = []
        named = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}
        if defaults and any(p.kind == p.VAR_KEYWORD for p in params):
            unknown = sorted(set(kwargs) - set(defaults) - named - set(_CALCULATOR_INIT))
            if unknown:
                takes = ", ".join(sorted(set(defaults) | (named - set(_CALCULATOR_INIT)))) or "none"
                raise CalculatorError(f"calculator {name!r} does not take {kw_option} {', '.join(unknown)} (it would "
                                      f"store them and never read them); it takes {takes}")
    for key in POSITIVE_PARAMETERS.get(_class_key(cls), ()):
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise CalculatorError(f"calculator {name!r}: {kw_option} {key} = {value!r} must be a finite number > 0 "
                                  "(a negative or zero length or energy turns the potential into nonsense)")


def _check_is_calculator(name: str, obj: Any, option: str, *, built: bool) -> None:
    """Refuse what a 'module:Class' name gave unless it is (``built``) or builds (a class or function) an ASE calculator."""
    what = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if built:
        if isinstance(obj, BaseCalculator):
            return
        problem = f"built a {what}, not an ASE calculator"
    elif isinstance(obj, type):
        if issubclass(obj, BaseCalculator):
            return
        problem = f"is the class {_class_key(obj)}, not an ASE calculator class"
    elif callable(obj):
        return  # a function: its result is checked once it is built
    else:
        problem = f"is a {what}, which cannot be called"
    raise CalculatorError(f"calculator {name!r} {problem} (ase.calculators.calculator.Calculator or a subclass); "
                          f"set {option} to an ASE calculator class or a function that returns one")


def is_builtin(name: str) -> bool:
    """Whether ``name`` is one of the short built-in calculator names (:data:`BUILTIN`)."""
    return name.lower() in BUILTIN


def _toml_inline(value: Any) -> str:
    """``value`` as a one-line TOML value (what ``--set section.key=VALUE`` reads)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def refuse_untrusted(calculator: str, kwargs: dict, *, name_given: bool, kwargs_given: bool, source: str,
                     trust: bool, option: str = "--calculator") -> None:
    """Raise :class:`UntrustedCalculatorError` when a calculator that is not built in would be imported or called
    with something only ``source`` (a checkpoint, a run's config.toml) named.

    ``name_given`` / ``kwargs_given``: the user named the calculator / its keyword arguments on the command
    line (``option``: '--calculator' for relax and eval, 'env.calculator' for ``--set`` on train). Built-in
    calculators are safe with any stored keyword arguments (they are checked); ``trust`` (:data:`TRUST_FLAG`)
    lets everything through.
    """
    if trust or is_builtin(calculator) or (name_given and (kwargs_given or not kwargs)):
        return
    if option.startswith("--"):
        explicit = f"{option} {calculator} {kwargs_option(option)} '{json.dumps(kwargs)}'"
    else:
        explicit = (f"--set {option}={json.dumps(calculator)} --set '{kwargs_option(option)}="
                    f"{_toml_inline(kwargs)}'")
    stored = f"{source} names calculator {calculator!r}" + (f" with keyword arguments {json.dumps(kwargs)}" if kwargs
                                                             else "")
    what = ("its keyword arguments come from there" if name_given
            else "it is not built in (" + ", ".join(BUILTIN) + ")")
    raise UntrustedCalculatorError(
        f"{stored}; {what}, and relaxrl never imports or calls what a file names unless you say so: if you trust "
        f"it, name it yourself ({explicit}) or add {TRUST_FLAG}")


def kwargs_option(option: str) -> str:
    """The keyword-arguments setting that goes with a calculator setting ('--calculator' → '--calculator-kwargs')."""
    return f"{option}-kwargs" if option.startswith("--") else f"{option}_kwargs"


def _import(name: str, option: str = "env.calculator") -> Any:
    if ":" in name:
        module_name, _, obj_name = name.partition(":")
    else:
        module_name, _, obj_name = name.rpartition(".")
    if not module_name or not obj_name:
        raise CalculatorError(
            f"calculator {name!r} is not one of {', '.join(BUILTIN)} nor 'module:Class'; set {option} to e.g. "
            "'emt', 'chgnet' or 'ase.calculators.lj:LennardJones'"
        )
    try:
        return getattr(importlib.import_module(module_name), obj_name)
    except (ImportError, AttributeError) as e:
        raise CalculatorError(
            f"calculator {name!r} cannot be imported ({e}); install its package or fix {option}"
        ) from None


def make_calculator(name: str, kwargs: dict | None = None, *, option: str = "env.calculator") -> Calculator:
    """Build an ASE calculator from its name (see the module docstring) and keyword arguments.

    ``option``: the setting the name came from, named in errors ('env.calculator', or
    '--calculator' for `relaxrl relax` / `eval`; the kwargs setting follows, :func:`kwargs_option`).
    """
    kwargs = dict(kwargs or {})
    kw_option = kwargs_option(option)
    builder = BUILTIN.get(name.lower())
    if builder is not None:
        try:
            return builder(kwargs)
        except CalculatorError as e:  # the builders speak of env.calculator_kwargs
            if kw_option == "env.calculator_kwargs":
                raise
            raise CalculatorError(str(e).replace("env.calculator_kwargs.", f"{kw_option} ")
                                  .replace("env.calculator_kwargs", kw_option)) from None
        except Exception as e:  # a constructor may raise anything on bad kwargs
            raise CalculatorError(
                f"calculator {name!r} rejected {kw_option}={kwargs!r}: {type(e).__name__}: {e}"
            ) from None
    cls = _import(name, option)
    _check_is_calculator(name, cls, option, built=False)
    needed = PLACEHOLDER_PARAMETERS.get(_class_key(cls), ())
    missing = [k for k in needed if k not in kwargs]
    if missing:
        defaults = getattr(cls, "default_parameters", {})
        example = ", ".join(f'"{k}": ...' for k in needed)
        raise CalculatorError(
            f"calculator {name!r} needs {', '.join(needed)} in {kw_option}; missing "
            f"{', '.join(f'{k} (default {defaults.get(k)!r})' for k in missing)}, placeholders that fit no real "
            f"element, so the result would be silently wrong; pass them, e.g. {kw_option} '{{{example}}}'"
        )
    _check_kwargs(name, cls, kwargs, kw_option)
    try:
        calc = cls(**kwargs)
    except Exception as e:  # a third-party constructor may raise anything
        raise CalculatorError(
            f"calculator {name!r} rejected {kw_option}={kwargs!r}: {type(e).__name__}: {e}"
        ) from None
    _check_is_calculator(name, calc, option, built=True)
    return calc


def calculator_elements(calculator: str | Calculator) -> frozenset[str] | None:
    """Element symbols a calculator (name or instance) handles, or None when it does not say.

    Cheap: imports nothing heavy and builds no model. ``module:Class`` names are asked for a
    ``supported_elements`` attribute only when the module is already imported or importable.
    """
    if isinstance(calculator, Calculator):
        declared = getattr(calculator, "supported_elements", None)
        if declared is not None:
            return frozenset(declared)
        calculator = type(calculator).__name__
        if calculator == "CHGNetCalculator":
            return _CHGNET_ELEMENTS
    name = str(calculator).lower()
    if name == "emt":
        return frozenset(parameters)
    if name == "chgnet":
        return _CHGNET_ELEMENTS
    if ":" in name or "." in name:
        try:
            declared = getattr(_import(str(calculator)), "supported_elements", None)
        except CalculatorError:
            return None
        return frozenset(declared) if declared is not None else None
    return None


def resolve_calculator(name: str | None, kwargs_json: str | None, env: Any, *, source: str = "the checkpoint",
                       trust: bool = False) -> tuple[str, dict]:
    """The calculator `relaxrl relax` / `eval` use: ``--calculator`` and ``--calculator-kwargs`` when given,
    else the checkpoint's (or config's) ``env.calculator`` and ``env.calculator_kwargs``.

    The config's kwargs go with the config's calculator only: ``--calculator emt`` on a CHGNet
    checkpoint builds EMT with no kwargs. A calculator that is not built in is taken from ``source``
    (the checkpoint) only with ``trust`` (:func:`refuse_untrusted`): nothing is imported here.
    """
    chosen = name or env.calculator
    if kwargs_json is not None:
        try:
            kwargs = json.loads(kwargs_json)
        except json.JSONDecodeError as e:
            raise CalculatorError(f"--calculator-kwargs {kwargs_json!r} is not JSON ({e}); "
                                  'pass an object such as \'{"device": "cuda"}\'') from None
        if not isinstance(kwargs, dict):
            raise CalculatorError(f"--calculator-kwargs must be a JSON object such as '{{\"device\": \"cuda\"}}', got {kwargs_json!r}")
    else:
        kwargs = dict(env.calculator_kwargs) if chosen == env.calculator else {}
    refuse_untrusted(chosen, kwargs, name_given=name is not None, kwargs_given=kwargs_json is not None,
                     source=source, trust=trust)
    return chosen, kwargs
