. /work/venv/bin/activate
T=button-press-topdown-v3; C=pt/model.safetensors; N=50000
python exp_ft.py mean-bc-rtg1 $T $C 0 $N mean-rtg1.0 '{}'
python exp_ft.py bc-rtg1-lr2e-6 $T $C 0 $N rtg1.0 '{"lr":2e-6}'
python exp_ft.py none-rtg1 $T $C 0 $N rtg1.0 '{"reg":"none"}'
python exp_ft.py door-bc-rtg1-lr2e-6 door-open-v3 $C 0 $N rtg1.0 '{"lr":2e-6}'
python exp_ft.py door-default door-open-v3 $C 0 $N none '{}'
