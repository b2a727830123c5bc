"""Launch mono_depth_node: one camera image -> depth, depth/camera_info, points2, depth/color.

Example:
  ros2 launch corr_depth_ros mono.launch.py namespace:=front image:=/camera/image_rect \
      camera_info:=/camera/camera_info depth_mode:=relative
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


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
        DeclareLaunchArgument('device', default_value='auto',
                              description='Compute device: auto, cpu or cuda.'),
        DeclareLaunchArgument('depth_mode', default_value='metric',
                              description='metric (metres, training-rig baseline) or relative '
                                          '(unitless, 1.0 = median depth of the frame).'),
    ]
    node = Node(
        package='corr_depth_ros',
        executable='mono_depth_node',
        name='mono_depth_node',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        # Later entries win: the launch arguments override the params file.
        parameters=[LaunchConfiguration('params_file'),
                    {'device': LaunchConfiguration('device'),
                     'depth_mode': LaunchConfiguration('depth_mode')}],
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
    )
    return LaunchDescription(arguments + [node])
