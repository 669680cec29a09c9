/tmp/tb-after bench --brokers 127.0.0.1:17101,127.0.0.1:17102,127.0.0.1:17103 --output json work -n 5000 --size 16384 --workers 4 --duration 30s --pids 6680,6681,6684 --no-progress
