from glob import glob

from setuptools import find_packages, setup

package_name = 'corr_depth_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # Shipped weights and their metadata travel inside the Python package.
    package_data={package_name: ['weights/*.safetensors', 'weights/*.json', 'core/synth/*.md']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')
         + glob('config/*.rviz')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='corr_depth_ros maintainers',
    maintainer_email='maintainers@corr-depth-ros.invalid',
    description='Learned stereo/mono depth, point clouds and dense correspondences for ROS 2.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'stereo_depth_node = corr_depth_ros.nodes.stereo_depth_node:main',
            'correspondence_node = corr_depth_ros.nodes.correspondence_node:main',
            'sim_stereo_camera_node = corr_depth_ros.nodes.sim_stereo_camera_node:main',
            'mono_depth_node = corr_depth_ros.nodes.mono_depth_node:main',
            'corr_depth = corr_depth_ros.cli:main',
        ],
    },
)
