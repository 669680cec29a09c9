/tmp/tb-after bench --brokers 127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103 --output json produce -n 20000 --size 1024 --producers 4 --duration 30s --pids 6680,6681,6684 --no-progress
