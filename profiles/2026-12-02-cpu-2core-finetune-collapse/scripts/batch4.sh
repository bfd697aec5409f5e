. /work/venv/bin/activate
T=button-press-topdown-v3; C=pt/model.safetensors; N=50000
python exp_ft.py none-rtg1-lr2e-6 $T $C 0 $N rtg1.0 '{"reg":"none","lr":2e-6}'
python exp_ft.py none-rtg.9-lr2e-6 $T $C 0 $N rtg0.9 '{"reg":"none","lr":2e-6}'
python exp_ft.py none-rtg.9 $T $C 0 $N rtg0.9 '{"reg":"none"}'
python exp_ft.py bc-rtg.9 $T $C 0 $N rtg0.9 '{}'
