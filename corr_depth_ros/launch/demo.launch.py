"""The demo with a real ROS install: the synthetic stereo camera feeding the stereo and
correspondence nodes (what `make demo` composes in one process where `ros2 launch` is absent).

    ros2 launch corr_depth_ros demo.launch.py [backend:=learned] [use_rviz:=true]
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def generate_launch_description():
    share = get_package_share_directory('corr_depth_ros')
    args = [
        DeclareLaunchArgument('backend', default_value='', choices=['', 'sgbm', 'learned', 'onnx'],
                              description='Stereo backend (default: config/stereo.yaml, sgbm).'),
        DeclareLaunchArgument('device', default_value='', choices=['', 'auto', 'cpu', 'cuda'],
                              description='Compute device of the learned models (default: the '
                              'config files, auto).'),
        DeclareLaunchArgument('use_rviz', default_value='false', choices=['true', 'false'],
                              description='Start RViz with config/corr_depth.rviz (needs rviz2).'),
    ]
    stereo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'stereo.launch.py')),
        launch_arguments={'use_sim_camera': 'true', 'backend': LaunchConfiguration('backend'),
                          'device': LaunchConfiguration('device'),
                          'use_rviz': LaunchConfiguration('use_rviz')}.items())
    return LaunchDescription(args + [stereo])
