"""Parameter declarations from one table per node (descriptors, ranges, read-only flags).

The same table feeds ``declare_parameters`` and the README's parameter reference
(``python -m corr_depth_ros.nodes.params``), so the two cannot drift apart.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    value_range: Optional[Tuple[float, float]] = None   # inclusive
    step: float = 0
    choices: Optional[Sequence[str]] = None

    def descriptor(self) -> ParameterDescriptor:
        text = self.description
        if self.choices:
            text += f' One of: {", ".join(self.choices)}.'
        desc = ParameterDescriptor(name=self.name, description=text, read_only=self.read_only)
        if self.value_range is not None:
            low, high = self.value_range
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                   step=int(self.step))]
            elif isinstance(self.default, float):
                desc.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                                to_value=float(high),
                                                                step=float(self.step))]
        return desc

    def check(self, value: Any) -> Optional[str]:
        """A reason why ``value`` is unacceptable, or None. (rclpy checks ranges too; this
        also covers choices and gives one message format for every node.)"""
        if self.choices is not None and value not in self.choices:
            return f'{self.name} must be one of {list(self.choices)}, got {value!r}'
        if self.value_range is not None and not isinstance(value, bool) and \
                isinstance(value, (int, float)):
            low, high = self.value_range
            if not low <= value <= high:
                return f'{self.name} must be in [{low}, {high}], got {value}'
        return None


def declare(node, specs: Sequence[ParamSpec]) -> Dict[str, Any]:
    """Declare every spec on ``node``; return {name: value} as set (overrides applied)."""
    values = {}
    for spec in specs:
        param = node.declare_parameter(spec.name, spec.default, spec.descriptor())
        values[spec.name] = param.value
        reason = spec.check(param.value)
        if reason:
            raise ValueError(f'invalid initial parameter: {reason}')
    return values


def validate(specs: Sequence[ParamSpec], params) -> SetParametersResult:
    """Check a set-parameters request against the specs' choices and ranges."""
    by_name = {s.name: s for s in specs}
    for param in params:
        spec = by_name.get(param.name)
        if spec is None:
            continue
        reason = spec.check(param.value)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
    return SetParametersResult(successful=True)


def markdown_table(specs: Sequence[ParamSpec]) -> str:
    lines = ['| parameter | default | runtime | description |', '|---|---|---|---|']
    for s in specs:
        extra = ''
        if s.value_range is not None and not isinstance(s.default, bool):
            extra = f' Range [{s.value_range[0]}, {s.value_range[1]}].'
        if s.choices:
            extra += f' One of: {", ".join(s.choices)}.'
        lines.append(f'| `{s.name}` | `{s.default!r}` | {"no (restart)" if s.read_only else "yes"} '
                     f'| {s.description}{extra} |')
    return '\n'.join(lines)
