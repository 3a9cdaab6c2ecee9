"""`imgfs run`: a command inside a container's FUSE-mounted rootfs, in its own namespaces.

`process` turns the image config and the command line into what to execute (docker's
rules for Env, WorkingDir, User, Entrypoint and Cmd); `sandbox` is the child side (new
mount, PID, UTS, IPC and optionally network namespaces, /proc, /dev, /sys, /etc/hosts,
/etc/resolv.conf, chroot, a tiny init as PID 1); `run` ties them to the container store
(create, mount, wait, unmount).
"""
