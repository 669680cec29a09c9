/tmp/jsbench --servers 127.0.0.1:17302,127.0.0.1:17303,127.0.0.1:17304 --output json work -n 20000 --size 1024 --workers 32 --duration-s 30 --pids 4239,4240,4243
