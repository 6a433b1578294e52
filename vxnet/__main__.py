from vxnet.cli import main

main()
