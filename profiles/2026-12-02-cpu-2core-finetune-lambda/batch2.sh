while pgrep -f batch1.sh >/dev/null; do sleep 5; done
for task in button-press-wall-v3 reach-wall-v3; do
./run.sh E_bc10_1e-5 $task 0 --lr 1e-5 --reg-weight 10
./run.sh F_bc100_1e-5 $task 0 --lr 1e-5 --reg-weight 100
done
