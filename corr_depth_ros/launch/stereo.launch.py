"""Stereo depth (+ dense correspondences) on a rectified stereo camera.

    ros2 launch corr_depth_ros stereo.launch.py [namespace:=stereo] [left_namespace:=left]
        [right_namespace:=right] [backend:=learned] [device:=cuda] [approximate_sync:=true]
        [params_file:=my.yaml] [use_rviz:=true] [use_sim_camera:=true]

Topics (inside `namespace`): <left_namespace>/image_rect, <left_namespace>/camera_info,
<right_namespace>/image_rect, <right_namespace>/camera_info in; disparity, depth,
depth/camera_info, points2, confidence, disparity/color out; the correspondence node serves
find_correspondence on the left image and the stereo depth.
"""
import os

from ament_index_python.packages import (PackageNotFoundError, get_package_prefix,
                                          get_package_share_directory)
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from corr_depth_ros.launch_arguments import given_arguments

FROM_PARAMS = ' Default: the params file\'s value.'
# The topics config/corr_depth.rviz displays (absolute there, i.e. for namespace '').
RVIZ_TOPICS = ('points2', 'disparity/color', 'depth', 'confidence', 'correspondence/heatmap',
               'correspondence/markers')


def generate_launch_description():
    share = get_package_share_directory('corr_depth_ros')
    config = os.path.join(share, 'config')
    arg = LaunchConfiguration
    args = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of every node and topic (e.g. the camera name).'),
        DeclareLaunchArgument('left_namespace', default_value='left',
                              description='Sub-namespace of the left camera topics (relative to '
                              'namespace; must not be empty).'),
        DeclareLaunchArgument('right_namespace', default_value='right',
                              description='Sub-namespace of the right camera topics (relative to '
                              'namespace; must not be empty).'),
        DeclareLaunchArgument('backend', default_value='', choices=['', 'sgbm', 'learned', 'onnx'],
                              description='Stereo backend: sgbm (most accurate on real textured scenes today), learned '
                              '(dense, with confidence; falls back to sgbm if its weights fail) or onnx. '
                              'See the README for measured numbers.' + FROM_PARAMS + ' (sgbm in '
                              'config/stereo.yaml)'),
        DeclareLaunchArgument('device', default_value='', choices=['', 'auto', 'cpu', 'cuda'],
                              description='Compute device of the learned models.' + FROM_PARAMS),
        DeclareLaunchArgument('approximate_sync', default_value='', choices=['', 'true', 'false'],
                              description='Match left/right by nearest stamp (unsynchronised '
                              'cameras).' + FROM_PARAMS + ' (false in config/stereo.yaml)'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(config, 'stereo.yaml'),
                              description='YAML with the stereo node parameters.'),
        DeclareLaunchArgument('correspondence_params_file',
                              default_value=os.path.join(config, 'correspondence.yaml'),
                              description='YAML with the correspondence node parameters.'),
        DeclareLaunchArgument('use_correspondence', default_value='true', choices=['true', 'false'],
                              description='Start the dense-descriptor correspondence node.'),
        DeclareLaunchArgument('use_rviz', default_value='false', choices=['true', 'false'],
                              description='Start RViz with config/corr_depth.rviz.'),
        DeclareLaunchArgument('use_sim_camera', default_value='false', choices=['true', 'false'],
                              description='Start the synthetic stereo camera as the input.'),
        DeclareLaunchArgument('sim_params_file', default_value=os.path.join(config, 'sim_camera.yaml'),
                              description='YAML with the synthetic camera parameters.'),
        DeclareLaunchArgument('use_sim_time', default_value='', choices=['', 'true', 'false'],
                              description='Every node on the /clock topic\'s time (a bag played '
                                          'with --clock). Default: the params files\' value '
                                          '(false when they have none).'),
    ]
    left = [arg('left_namespace'), '/']
    right = [arg('right_namespace'), '/']

    def stereo_nodes(context):
        # Launch arguments that were given override the params files; unset ones leave them be.
        stereo = Node(
            package='corr_depth_ros', executable='stereo_depth_node', name='stereo_depth_node',
            namespace=arg('namespace'), output='screen',
            parameters=[arg('params_file'),
                        given_arguments(context, 'backend', 'device', 'approximate_sync',
                                        'use_sim_time')],
            remappings=[('left/image_rect', left + ['image_rect']),
                        ('left/camera_info', left + ['camera_info']),
                        ('right/image_rect', right + ['image_rect']),
                        ('right/camera_info', right + ['camera_info'])])
        correspondence = Node(
            package='corr_depth_ros', executable='correspondence_node', name='correspondence_node',
            namespace=arg('namespace'), output='screen',
            condition=IfCondition(arg('use_correspondence')),
            parameters=[arg('correspondence_params_file'),
                        given_arguments(context, 'device', 'use_sim_time')],
            remappings=[('image', left + ['image_rect']), ('camera_info', left + ['camera_info'])])
        sim_camera = Node(
            package='corr_depth_ros', executable='sim_stereo_camera_node',
            name='sim_stereo_camera_node', namespace=arg('namespace'), output='screen',
            condition=IfCondition(arg('use_sim_camera')),
            parameters=[arg('sim_params_file'), given_arguments(context, 'use_sim_time')],
            remappings=[('left/image_rect', left + ['image_rect']),
                        ('left/camera_info', left + ['camera_info']),
                        ('right/image_rect', right + ['image_rect']),
                        ('right/camera_info', right + ['camera_info'])])
        return [sim_camera, stereo, correspondence]

    def rviz_node(context):
        try:
            get_package_prefix('rviz2')
        except PackageNotFoundError:
            # Without this guard a missing rviz2 aborts the launch and orphans the nodes started.
            return [LogInfo(msg='rviz2 is not installed: use_rviz ignored',
                            condition=IfCondition(arg('use_rviz')))]
        # config/corr_depth.rviz names the outputs at the root; inside `namespace` they move.
        ns = context.launch_configurations.get('namespace', '').strip('/')
        moved = [(f'/{topic}', f'/{ns}/{topic}') for topic in RVIZ_TOPICS] if ns else []
        return [Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
                     arguments=['-d', os.path.join(config, 'corr_depth.rviz')],
                     parameters=[given_arguments(context, 'use_sim_time')], remappings=moved,
                     condition=IfCondition(arg('use_rviz')))]

    return LaunchDescription(args + [OpaqueFunction(function=stereo_nodes),
                                     OpaqueFunction(function=rviz_node)])
