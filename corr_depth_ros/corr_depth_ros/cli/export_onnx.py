"""`corr_depth export-onnx stereo --weights W --out model.onnx --height H --width W`."""
from ._args import in_range

# The learned backend's smallest side (core.backends.learned.MIN_NETWORK_SIDE_PX, not imported
# here: it pulls in cv2 and numpy) and the onnx backend's largest input (onnx_backend.INPUT_SIZE_RANGE_PX).
# A model exported smaller ran, and the onnx backend resized a 741x500 pair down to it: 100 %
# valid, EPE 20.8 px.
SIDE_RANGE_PX = (32, 8192)


def register(subparsers):
    parser = subparsers.add_parser('export-onnx', help='export a trained model to ONNX')
    children = parser.add_subparsers(dest='export_target', metavar='MODEL')
    p = children.add_parser('stereo', help='the learned stereo network (fixed input size)')
    p.add_argument('--weights', default='', help='safetensors weights (default: shipped)')
    p.add_argument('--out', required=True, help='output .onnx path')
    p.add_argument('--height', type=in_range(int, *SIDE_RANGE_PX), required=True,
                   help='input height, pixels (32 to 8192)')
    p.add_argument('--width', type=in_range(int, *SIDE_RANGE_PX), required=True,
                   help='input width, pixels (32 to 8192)')
    p.add_argument('--opset', type=int, default=17,
                   help='ONNX opset (12 or higher; default 17)')
    p.set_defaults(func=run_stereo)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def run_stereo(args) -> int:
    import os

    from ..core.backends.learned import DEFAULT_WEIGHTS
    from ..core.stereo_net import ARCH, build_stereo_net
    from ..core.stereo_net.export import export_stereo_onnx
    from ..core.training import load_weights
    from . import check_output
    check_output(args.out, '--out', renamed_into_place=True)   # export.py writes a .partial
    model, _ = load_weights(args.weights or DEFAULT_WEIGHTS, build_stereo_net, expected_arch=ARCH)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    parity = export_stereo_onnx(model, args.out, height=args.height, width=args.width,
                                opset=args.opset)
    print(f'wrote {args.out} ({args.width}x{args.height}, inputs left/right RGB in [0, 1], '
          'outputs disparity px / confidence)')
    print(f'parity torch vs onnxruntime: max abs diff disparity '
          f'{parity["max_abs_diff_disparity_px"]:.3g} px, confidence '
          f'{parity["max_abs_diff_confidence"]:.3g}')
    return 0
