/tmp/jsbench --servers 127.0.0.1:17302,127.0.0.1:17303,127.0.0.1:17304 --output json produce -n 20000 --size 1024 --producers 4 --duration-s 30 --pids 4239,4240,4243
