for task in button-press-wall-v3 reach-wall-v3; do
./run.sh A_bc_2e-6 $task 0 --lr 2e-6
./run.sh B_bc_1e-5 $task 0 --lr 1e-5
./run.sh C_none_1e-5 $task 0 --lr 1e-5 --reg none
./run.sh D_bc_5e-6 $task 0 --lr 5e-6
done
