"""Parameter declarations from one table per node (descriptors, ranges, read-only flags).

The same table feeds ``declare_parameters`` and the README's parameter reference
(``python -m corr_depth_ros.nodes.params``), so the two cannot drift apart.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

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
    # A further check of a value: the reason it is unacceptable, or None (at start-up and on
    # every change, like the range and choices).
    validator: Optional[Callable[[Any], Optional[str]]] = None

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
        if self.validator is not None:
            reason = self.validator(value)
            if reason:
                return f'{self.name}: {reason}'
        return None


# Shared by every node that subscribes to camera images.
IMAGE_TRANSPORT = ParamSpec(
    'image_transport', 'raw', 'raw: subscribe to sensor_msgs/Image; compressed: to '
    'image_transport\'s <image>/compressed (jpeg/png), e.g. over Wi-Fi.', read_only=True,
    choices=('raw', 'compressed'))


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


def warn_unknown_parameters(node) -> None:
    """Warn about values given for parameters the node does not have (a misspelt name in a
    params file or -p, a QoS override for a topic it does not use, e.g. one without the
    namespace): ROS ignores them silently. Call once every parameter is declared, QoS overrides
    included (they are declared with the publishers and subscriptions)."""
    given = getattr(node, '_parameter_overrides', {}) or {}
    unknown = sorted(name for name in given if not node.has_parameter(name))
    if unknown:
        node.get_logger().warning(
            f'ignored parameter(s) {", ".join(unknown)}: {node.get_fully_qualified_name()} has '
            'no such parameter (check the spelling; a QoS override names the resolved topic, '
            'namespace included; `ros2 param list` shows the names)')


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


# Nodes documented in the README's parameter reference, in order: (node name, module).
DOCUMENTED_NODES = (('stereo_depth_node', 'stereo_depth_node'),
                    ('mono_depth_node', 'mono_depth_node'),
                    ('correspondence_node', 'correspondence_node'),
                    ('sim_stereo_camera_node', 'sim_stereo_camera_node'))
README_BEGIN = '<!-- parameter tables: generated by `python -m corr_depth_ros.nodes.params --readme README.md` -->'
README_END = '<!-- end of generated parameter tables -->'


def reference_markdown() -> str:
    """Every documented node's parameter table, from the same PARAMS the nodes declare."""
    import importlib
    parts = []
    for node_name, module in DOCUMENTED_NODES:
        specs = importlib.import_module(f'{__package__}.{module}').PARAMS
        parts.append(f'#### {node_name}\n\n{markdown_table(specs)}\n')
    return '\n'.join(parts)


def update_readme(path: str) -> bool:
    """Rewrite the block between README_BEGIN and README_END; True if the file changed."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f'{path} has no generated-parameters block ({README_BEGIN!r} ... '
                         f'{README_END!r})')
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    new = f'{head}{README_BEGIN}\n\n{reference_markdown()}\n{README_END}{tail}'
    if new != text:
        with open(path, 'w', encoding='utf-8') as f:
            f.write(new)
    return new != text


if __name__ == '__main__':
    import argparse
    parser = argparse.ArgumentParser(description='Print (or write into a README) the parameter '
                                     'reference of every node.')
    parser.add_argument('--readme', default='', help='rewrite the generated block of this file')
    cli = parser.parse_args()
    if cli.readme:
        print(f'{cli.readme}: ' + ('updated' if update_readme(cli.readme) else 'already up to date'))
    else:
        print(reference_markdown())
