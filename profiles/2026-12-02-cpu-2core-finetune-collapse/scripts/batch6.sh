. /work/venv/bin/activate
while pgrep -f batch5.sh > /dev/null; do sleep 10; done
C=pt/model.safetensors; N=50000
python pre_stoch.py $C button-press-topdown-v3 door-open-v3
for T in button-press-topdown-v3 door-open-v3; do for S in 0 1; do
python exp_ft.py m-A-$T-$S $T $C $S $N noppo '{}'
python exp_ft.py m-B-$T-$S $T $C $S $N rtg1.0 '{"lr":2e-6}'
python exp_ft.py m-C-$T-$S $T $C $S $N mean-rtg1.0 '{"lr":2e-6}'
python exp_ft.py m-D-$T-$S $T $C $S $N none '{"lr":2e-6}'
done; done
