"""Launch mono_depth_node: one camera image -> depth, depth/camera_info, points2, depth/color.

Example:
  ros2 launch corr_depth_ros mono.launch.py namespace:=front image:=/camera/image_rect \
      camera_info:=/camera/camera_info depth_mode:=relative
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from corr_depth_ros.launch_arguments import given_arguments


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('corr_depth_ros'), 'config',
                                  'mono.yaml')
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and its relative topics.'),
        DeclareLaunchArgument('image', default_value='image',
                              description='Input rectified colour image topic (remap of "image").'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='Input CameraInfo topic of that image (remap of '
                                          '"camera_info").'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='ROS parameters file (default: the installed '
                                          'config/mono.yaml).'),
        DeclareLaunchArgument('device', default_value='', choices=['', 'auto', 'cpu', 'cuda'],
                              description='Compute device: auto, cpu or cuda. Default: the '
                                          "params file's value (auto in config/mono.yaml)."),
        DeclareLaunchArgument('depth_mode', default_value='', choices=['', 'metric', 'relative'],
                              description='metric (metres, training-rig baseline) or relative '
                                          '(unitless, 1.0 = median depth of the frame). Default: '
                                          "the params file's value (metric in config/mono.yaml)."),
        DeclareLaunchArgument('use_sim_time', default_value='', choices=['', 'true', 'false'],
                              description='The node on the /clock topic\'s time (a bag played '
                                          'with --clock). Default: the params file\'s value '
                                          '(false when it has none).'),
    ]

    def mono_node(context):
        return [Node(
            package='corr_depth_ros',
            executable='mono_depth_node',
            name='mono_depth_node',
            namespace=LaunchConfiguration('namespace'),
            output='screen',
            # Launch arguments that were given override the params file; unset ones leave it be.
            parameters=[LaunchConfiguration('params_file'),
                        given_arguments(context, 'device', 'depth_mode', 'use_sim_time')],
            remappings=[('image', LaunchConfiguration('image')),
                        ('camera_info', LaunchConfiguration('camera_info'))],
        )]

    return LaunchDescription(arguments + [OpaqueFunction(function=mono_node)])
