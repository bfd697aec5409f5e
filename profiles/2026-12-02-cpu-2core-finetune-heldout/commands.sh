# As run (from a checkout of ec5c519; outputs in raw/).
sodp data generate --tasks drawer-close,window-open,reach,button-press,dial-turn --transitions-per-task 20000 --workers 2 --out data/held
sodp pretrain --data data/held --out pt_held --preset tiny --steps 4000 --no-progress
sodp eval --ckpt pt_held/model.safetensors --tasks drawer-close,window-open,reach,button-press,dial-turn --episodes 50 --workers 2 --out eval_pre
for S in 0 1; do for T in drawer-close window-open; do
  OMP_NUM_THREADS=1 sodp finetune --ckpt pt_held/model.safetensors --task $T --env-steps 50000 --num-envs 10 --num-workers 2 \
    --eval-every 50000 --eval-episodes 50 --seed $S --out new-$T-$S --no-progress
  OMP_NUM_THREADS=1 sodp finetune --ckpt pt_held/model.safetensors --task $T --env-steps 50000 --num-envs 10 --num-workers 2 \
    --eval-every 50000 --eval-episodes 50 --seed $S --out old-$T-$S --no-progress --signal chunk --log-ratio sum --lr 1e-5
done; done
python aggregate.py
